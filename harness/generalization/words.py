"""Pronounceable nonsense words (4-5 letters) for the generalization suite, drawn with a seeded RNG.

A word is built from consonant-vowel patterns: CVCC (femp), CCVC (glon), CCVCC (flomp) and CVCV
(rony). Words that are English, or that SmolLM2's tokenizer holds as one whole-word token, are left
out (STOPLIST), so that a model brings no prior knowledge about an entity, a property or a verb.
"""
from __future__ import annotations

import random
from functools import lru_cache

ONSETS = tuple("bdfgklmnprstvz")
CLUSTER_ONSETS = ("bl", "br", "dr", "fl", "fr", "gl", "gr", "kl", "kr", "pl", "pr", "sl", "sm", "sn", "sp", "st",
                  "tr")
VOWELS = tuple("aeiou")
CODAS = tuple("bdfgklmnprst")
CLUSTER_CODAS = ("ft", "lk", "lp", "mp", "nd", "nk", "nt", "pt", "rb", "rk", "rm", "rn", "sk", "sp", "st")
FINAL_VOWELS = tuple("aiouy")  # no final e: CVCe is the commonest English shape (bone, cake, mile)

# The candidate space's English words and whole-word tokens. Derived once by intersecting
# candidate_space() with: every word of the offline benchmark texts (ARC, OpenBookQA, BoolQ, PIQA,
# WinoGrande, HellaSwag, GSM8K, MATH), SmolLM2's single-token lower-case words, and a hand-read list
# of rarer English words and names. Kept here as a fixed list, so that the vocabulary (and hence
# every generated row) never depends on files outside this module.
STOPLIST = frozenset("""
baba baby baku bali balk band bank bapt barb bark barn basa bask bast bend bent beri berm best beta bevy bind biro
bivy blab blag blam bland blank blast blat bleb bled blem blend blimp blind blink blip blob blog blond blot blub
blunt blur blurb boba body bogo bogy bola bona bond bonk bony bora bork born boto bozo brad brag bran brand brant
bras brat bred brent bret brid brig brim brink brisk brit brom bron bros brunt brut bulk bump bund bunk bunt burk
burn bury busk bust busy buzy dada dado daft damp dana dani dank dany dara dark darn data davy dedu deft defy dela
deli demi demo dend dent deny depo dept derm desk desp dest didi dina dink dino dirk disk disp dist diva dodo doki
dont dopy dora dork dorm dory dota dozy drab draft drag dram drank drat dred dreg drift drink drip drop drub drug
drum drunk duku duly dump dunk dunt dura dusk dust duty fado fand fant farm fast fava fend ferb fern fest feta fido
fifa fifi filo find fink firm fist flab flag flan flank flap flask flat fled fles flint flip flit flog flop flor
flub flunk fogy folk fond font forb fork form fost frag fram fran frank frant fred fren fres fret frig frisk frog
from frond front frost frump frust fugu fumy fund funk furn fury gaga gala gamy gant garn gary gasp gast geli gent
genu germ gest gift gigi gila gimp gina gira gist giza glad glam gland glen glib glim glimp glint glob glom glomp
glop glor glug glum glut gobi goby gogo gonk gory gosa grab grad graf graft gram gramp gran grand grant gras grasp
grat gref greg gren grid gril grim grin grind grip gris grit grog grok grub grump grunt gulp gumi gump gunk guru
gust kagu kaka kali kamp kara kati katy kava kelp kent kept kera kern keto kiki kilo kimi kimo kind kink kira kirk
kobo koby kody kona kora korn kory kraft krak kris kudo kudu kuna lady lama lamp lana land lani lank lapt lara lark
last lava lazy left lego lena lend leno lent lept lest levi levy lido lift liga lila lilo lily lima limo limp limy
link lint lira lisa lisp list liza lobo loft logo loki loko lola lomi lori lory lost ludo luka lulu lump luna lupo
luri lurk lust maga mama mana mand mani mant manu many mara mari mark mary mask mast medi mega memo mend ment menu
mery mesa meso meta midi mila milk milo mimi mina mind mini mink mint mira mirk miry miso mist moba moby mola moly
mona monk mono mont mopy morb morn most moto mozy mund murk musa musk must nada naga nala nali namy nana nand nani
nano napa nark nary nasa nato nava navy nazi nedy neli nemo nera nero nest neti nida niko nilo nina nint nivy nolo
nond nora nori norm nost nosy nova novo pada palp pand pani pant papa papi para park parm paso past pedi pend pent
pept peri perk perm peru peso pest pika pili pima pimp pink pint pisa pist pita pitu pity plag plan plank plant plas
plast plat plent plod plonk plop plot plug plum plump plunk plur plus plut pogo poky polo poly pomp pond pont pony
popo pork porn post posy prag pram prank prat preb pred pref prel prem prep pres prest pret prig prim primp prin
print prob prod prof prog prol prom pron prop pros prost prot prud pula pulp puma pump punk punt puny pupa rada radi
raft ragu ramp rand rani rank rant rapt rasp ravi reba redo redu rely remi remy rena rend rent reny repo rept resp
rest rift riga riku rind rink risk rita riza robi roku roly roma romp rona ropy rory rosa rosi rosy roto rubu ruby
rudy ruly rump runt rupt rusk rust saga sago salk saly sami sand sank sara sari sata sega semi send sent sept serm
sift silk silo simu sina sink siri situ sity slab slag slam slant slap slat sled slept slid slim slip slit slob slog
slop slot slug slum slump slunk slur slut smel smirk smog smok smug smut snag snap snes snip snob snog snork snot
snub snug soba soda sofa soft solo sony spam span spank spar spark spas spat sped spend spent sper sperm spin spir
spit spok spont spor spot spud spun spunk spur spurn stab stag stal stalk stam stamp stan stand stank star stark
stat stem sten stent step ster stern stif stim stink stint stip stir stom stomp stop stor stork storm stub stud
stump stun stunk stunt stup sudo suki sulk sumo sump sund sunk suny suri surn susp sust susy suzy tabu talk tamp
tank tant tapa tara tarn taro task taso tast tata tedy temp tend tent term tern test tevi tidy tiki tina tini tink
tino tint tiny toby tody tofu toga togo tolu tona toni tony tori torn tory trag tram tramp tran trap trek trem trend
trent tresp trib trif trig tril trim trip trit trod trol tromp trop trot trug trump trunk trust tuba tuft tump tuna
tunu turb turk turn tusk tutu vaba vagu valu vamp vari vary vast vega vena vend vent vera verb vern vero very vest
veto vigo vika vind vino visa vita vivi vivo volk zany zara zebu zeno zero zest zeta zika zizi zola zonk zora zorb
zorn zulu
""".split())


@lru_cache(maxsize=1)
def candidate_space() -> tuple[str, ...]:
    """Every word the patterns can build, English or not, in a fixed order."""
    words = [o + v + c for o in ONSETS for v in VOWELS for c in CLUSTER_CODAS]
    words += [o + v + c for o in CLUSTER_ONSETS for v in VOWELS for c in CODAS]
    words += [o + v + c for o in CLUSTER_ONSETS for v in VOWELS for c in CLUSTER_CODAS]
    words += [o + v + p + f for o in ONSETS for v in VOWELS for p in ONSETS for f in FINAL_VOWELS]
    return tuple(sorted(set(words)))


def nonsense_space(extra_stop: frozenset[str] = frozenset()) -> tuple[str, ...]:
    return tuple(w for w in candidate_space() if w not in STOPLIST and w not in extra_stop)


class WordSource:
    """Draws distinct nonsense words with a seeded RNG. No drawn word is a prefix of another drawn one
    (flom / flomp), so that no entity's name starts with another's."""

    def __init__(self, rng: random.Random, extra_stop: frozenset[str] = frozenset()):
        self._pool = list(nonsense_space(extra_stop))
        rng.shuffle(self._pool)
        self._next = 0
        self._used: set[str] = set()
        self._used_stems: set[str] = set()  # the first four letters of each drawn five-letter word

    @staticmethod
    def capacity(extra_stop: frozenset[str] = frozenset()) -> int:
        """How many words one source can always hand out, whatever the draw order.

        Words are 4 or 5 letters, so a prefix pair is a 4-letter word and one of its 5-letter
        extensions. Each such family yields at least one word; every other word is always free.
        """
        space = nonsense_space(extra_stop)
        stems = {w for w in space if len(w) == 4}
        families = {w[:4] for w in space if len(w) == 5 and w[:4] in stems}
        in_family = sum(1 for w in space if w in families or (len(w) == 5 and w[:4] in families))
        return len(space) - in_family + len(families)

    def take(self, n: int, accept=None) -> list[str]:
        """The next n words; with `accept`, only words it returns True for (the others are passed over)."""
        out: list[str] = []
        while len(out) < n:
            if self._next >= len(self._pool):
                raise ValueError(f"the nonsense vocabulary ran out after {len(self._used)} words")
            word = self._pool[self._next]
            self._next += 1
            clash = word[:4] in self._used if len(word) == 5 else word in self._used_stems
            if clash or (accept is not None and not accept(word)):
                continue
            self._used.add(word)
            if len(word) == 5:
                self._used_stems.add(word[:4])
            out.append(word)
        return out
