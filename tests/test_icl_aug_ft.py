"""ICL-augmented fine-tuning: parsing, the metered augment phase and its shared-prefix cache, the budget check, and
the strategy end to end on tiny-random, with its errors."""
import json
import re

import pytest
from conftest import compose, needs_data

KNOWLEDGE_DOCS = ["femp are more dangerous than glon.", "All trolk are vasp. All vasp are blick.",
                  "lurds are a type of pelm. pelm are rony."]


def test_parse_statements_hand_cases():
    from baselines.augmentation import parse_statements

    raw = ('1. glon are less dangerous than femp.\n- Compared with glon, femp are more dangerous\n'
           'Implied:\n"yomp are big." Every trolk is a vasp!  two words.\n\nStatement: dax are tall.')
    assert parse_statements(raw, ("\n\n", "Statement:")) == [
        "glon are less dangerous than femp.", "Compared with glon, femp are more dangerous.", "yomp are big.",
        "Every trolk is a vasp."]
    assert parse_statements("\n\n", ("\n\n",)) == []
    assert parse_statements("(a) glon are tall. (b) no", ()) == ["glon are tall."]  # too short: dropped


def test_statements_dedup_against_originals_and_each_other_and_drop_unknown_words():
    from baselines.augmentation import AugmentStats, Prompts, Unit, statements, vocabulary_of

    prompts = Prompts.load("knowledge")
    unit = Unit(0, "Did you know that", "femp are more dangerous than glon.")
    raw = [(unit, "local", "glon are less dangerous than femp.\nfemp are more dangerous than glon.\n"
                           "Glon are less  dangerous than femp\nglon are less dangerous than cats.\n"
                           "zzqx are dangerous things.")]
    stats = AugmentStats()
    kept = statements(raw, prompts, [unit.text], vocabulary_of(KNOWLEDGE_DOCS), stats)
    # "cats" and "zzqx" are in neither the data nor the prompt file; "things" is not either
    assert [s for _, _, s in kept] == ["glon are less dangerous than femp."]
    assert (stats.parsed, stats.duplicates, stats.unknown_word, stats.kept) == (5, 2, 2, 1)
    stats = AugmentStats()
    kept = statements(raw, prompts, [unit.text], None, stats)  # no filter: the unknown words stay
    assert len(kept) == 3 and stats.unknown_word == 0


def _decoder(tiny, meter):
    from baselines.augmentation import Decoder

    return Decoder(tiny.model, tiny.tokenizer, meter, chat=True, name="tiny-random")


def _global_run(tiny, cache: bool):
    from baselines import augmentation as aug
    from harness.costs import PhaseMeter

    prompts = aug.Prompts.load("knowledge")
    docs = [aug.Unit(i, "Did you know that", t) for i, t in enumerate(KNOWLEDGE_DOCS)]
    with PhaseMeter("augment", "cpu") as meter:
        decoder = _decoder(tiny, meter)
        work = aug.plan(decoder, prompts, [], docs, ("global",), True, 1, 8, 12, 1, None, cache, seed=0)
        raw, stats = aug.run(decoder, prompts, work, 0.0, cache, seed=0, progress=False)
    return work, raw, stats, meter.cost


def test_global_augmentation_encodes_the_shared_prefix_once_and_writes_the_same_text(tiny):
    work, raw_cached, cached, cost_cached = _global_run(tiny, cache=True)
    _, raw_plain, plain, cost_plain = _global_run(tiny, cache=False)
    (prefix, items), = work.shards
    assert len(items) == 3 and cached.shards == plain.shards == 1
    assert [t for *_, t in raw_cached] == [t for *_, t in raw_plain]  # greedy: the cache changes nothing written
    assert (cached.prefix_passes, plain.prefix_passes) == (1, 3)
    assert cached.generated_tokens == plain.generated_tokens > 0
    # the recomputing path encodes the prefix twice more: exactly 2·len(prefix) more positions processed
    assert cost_plain.tokens - cost_cached.tokens == 2 * len(prefix)
    # ... and its FLOPs, by hand from the config (hidden 64, 2 layers, 4 heads of 16, 2 KV heads, MLP 128): the prefix's
    # P tokens through every layer's projections twice more; one output-head position fewer (the cached path's
    # prefill computes one); attention (4·heads·head_dim per query-key pair and layer, as the counter prices sdpa)
    # over (P+S_i)² per recomputed document instead of P² once and S_i·(P+S_i) per document
    cfg = tiny.model.config
    h, m = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * h // cfg.num_attention_heads
    assert (h, m, kv, cfg.num_hidden_layers) == (64, 128, 32, 2)
    layer = h * h + 2 * h * kv + h * h + 3 * h * m  # q, k and v, o, gate up and down
    head = cfg.vocab_size * h
    p, suffixes = len(prefix), [len(s) for _, s in items]
    pairs = sum((p + s) ** 2 for s in suffixes) - p * p - sum(s * (p + s) for s in suffixes)
    extra = 2 * 2 * p * 2 * layer - 2 * head + 4 * h * 2 * pairs
    assert cost_plain.flops_measured - cost_cached.flops_measured == extra
    for cost in (cost_cached, cost_plain):
        assert cost.flops_measured == pytest.approx(cost.flops_analytic, rel=0.10)
        assert cost.phase == "augment" and cost.wall_s > 0


def test_global_asks_about_the_drawn_documents_with_every_document_in_context(tiny):
    from baselines import augmentation as aug

    prompts = aug.Prompts.load("knowledge")
    docs = [aug.Unit(i, "Did you know that", t) for i, t in enumerate(KNOWLEDGE_DOCS)]
    decoder = _decoder(tiny, None)
    whole = aug.plan(decoder, prompts, [], docs, ("global",), True, 1, 8, 12, 1, None, True, seed=0)
    drawn = aug.plan(decoder, prompts, [], docs, ("global",), True, 1, 8, 12, 1, None, True, seed=0, ask=[docs[1]])
    (prefix, items), = drawn.shards
    assert prefix == whole.shards[0][0]  # the same context: all three documents
    assert [u for u, _ in items] == [docs[1]] and drawn.flops_upper < whole.flops_upper
    # shards of one document each: only the drawn document's shard is computed
    narrow = aug.plan(decoder, prompts, [], docs, ("global",), True, 1, 8, 12, 1, 20, True, seed=0, ask=[docs[2]])
    assert [[u for u, _ in items] for _, items in narrow.shards] == [[docs[2]]]


def test_local_augmentation_samples_and_parses_on_tiny_random(tiny):
    from baselines import augmentation as aug
    from harness.costs import PhaseMeter

    prompts = aug.Prompts.load("knowledge")
    units = [aug.Unit(0, "Did you know that", KNOWLEDGE_DOCS[0]), aug.Unit(1, "Did you know that", KNOWLEDGE_DOCS[1])]
    with PhaseMeter("augment", "cpu") as meter:
        decoder = _decoder(tiny, meter)
        work = aug.plan(decoder, prompts, units, [], ("local",), True, 3, 24, 8, 1, None, True, seed=0)
        raw, stats = aug.run(decoder, prompts, work, 1.5, True, seed=3, progress=False)
        kept = aug.statements(raw, prompts, [u.text for u in units], None, stats)
    assert stats.outputs == 6 and len(raw) == 6 and stats.parsed > 0 and stats.kept == len(kept) > 0
    assert len({aug.normalized(s) for *_, s in kept}) == len(kept)  # deduplicated
    assert all(s.endswith(".") and len(s.split()) >= 3 for *_, s in kept)
    assert meter.cost.flops_measured == pytest.approx(meter.cost.flops_analytic, rel=0.10)
    assert meter.cost.flops_analytic <= work.flops_upper  # the budget's upper bound holds
    again = aug.run(decoder, prompts, work, 1.5, True, seed=3, progress=False)[0]
    assert [t for *_, t in again] == [t for *_, t in raw]  # seeded sampling


def _run(tmp_path, *overrides):
    from harness.cli import main

    main(["run", "model=tiny-random", f"runs_dir={tmp_path / 'runs'}", "eval.limit=6", "progress=false",
          *overrides])
    return [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("record.json")]


def _fails(tmp_path, capsys, *overrides) -> str:
    """The one-line error a cell stops with (a non-zero exit), having written no record."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        _run(tmp_path, *overrides)
    assert exit_.value.code not in (0, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    assert not list((tmp_path / "runs").rglob("record.json"))
    return errors[0]


GEN = ["task=gen_reversals", "strategy=icl_aug_ft", "strategy.augment.max_units=3", "strategy.augment.max_documents=3",
       "strategy.augment.max_new_tokens=12", "strategy.augment.global_max_new_tokens=12",
       "strategy.augment.temperature=1.5", "strategy.augment.filter_unknown_words=false", "strategy.batch_size=2"]


def test_icl_aug_ft_end_to_end_on_a_knowledge_task(tmp_path):
    (record,) = _run(tmp_path, *GEN, "budget=flops_3e12", "strategy.max_steps=3")
    adaptation = record["adaptation"]
    phases = [c["phase"] for c in record["costs"]]
    assert phases == ["augment", "train", "inference"]
    augment, train = record["costs"][0], record["costs"][1]
    assert augment["flops_measured"] == pytest.approx(augment["flops_analytic"], rel=0.10)
    details = adaptation["details"]
    assert details["knowledge_pool"] and details["local_prompts"] == 3 and details["global_documents"] == 3
    assert details["augmented_examples"] == augment["details"]["kept"] > 0
    assert details["original_examples"] == details["pool_documents"]  # one sentence per reversal article
    lines = (tmp_path / "runs").rglob("augmented.jsonl")
    assert sum(len(p.read_text().splitlines()) for p in lines) == details["augmented_examples"]
    # the FLOP budget pays for the augmentation and the training, both as measured
    budget = adaptation["budget"]
    assert budget["parts"]["own"] == pytest.approx(augment["flops_measured"] + train["flops_measured"])
    assert adaptation["labels_used"] == details["pool_documents"] and details["steps"] == 3


def test_a_budget_that_cannot_pay_for_augmentation_and_one_step_is_refused_before_compute(tmp_path, capsys):
    error = _fails(tmp_path, capsys, *GEN, "budget=flops_3e12", "budget.amount=1e9")
    assert "cannot pay for augmentation (up to ~" in error and "3 local prompts, 3 global documents" in error
    assert not list((tmp_path / "runs").rglob("augmented.jsonl"))  # refused before generating


@needs_data
def test_augmentation_that_parses_to_nothing_names_the_prompt_file(tmp_path, capsys):
    # tiny-random, greedy, writes a blank line first on this task: the task prompt's stop cuts it to nothing
    error = _fails(tmp_path, capsys, "task=arc_easy", "strategy=icl_aug_ft_local", "budget=steps_50",
                   "strategy.max_steps=1", "strategy.augment.max_units=2")
    assert re.search(r"nothing parseable in 2 outputs of .*icl_aug_prompts/task\.yaml: e\.g\. '\\n", error), error


@pytest.mark.parametrize("override, message", [
    ("strategy.augment.global_max_new_tokens=1000", r"context window \(1024\) cannot hold the global prompt"),
    ("strategy.augment.max_new_tokens=1000", r"local prompt of knowledge\.yaml of \d+ tokens \+ 1000 new tokens "
                                             r"exceeds its context window \(1024\)"),
    ("strategy.augment.generator=no-such-model", r"generator 'no-such-model' is not a model config"),
    ("strategy.augment.kinds=[local,remote]", r"kinds must be distinct names among local, global"),
    ("strategy.augment.samples=2", r"needs strategy.augment.temperature > 0"),
    ("strategy.augment.prompts=nope", r"augmentation prompts 'nope' not found"),
])
def test_bad_augmentation_settings_are_one_line_errors_without_a_record(tmp_path, capsys, override, message):
    overrides = [o for o in GEN if not o.startswith("strategy.augment.temperature")] + [override]
    error = _fails(tmp_path, capsys, *overrides, "budget=steps_50", "strategy.max_steps=1")
    assert re.search(message, error), error


def test_the_prompt_files_key_the_cell():
    from baselines.icl_aug_ft import IclAugmentedFineTuning

    strategy = IclAugmentedFineTuning()
    auto = strategy.fingerprint(compose("strategy=icl_aug_ft").strategy)
    task = strategy.fingerprint(compose("strategy=icl_aug_ft", "strategy.augment.prompts=task").strategy)
    assert len(auto) == len(task) == 64 and auto != task


def test_full_context_icl_puts_the_whole_pool_in_context_or_a_seeded_subsample(tmp_path):
    (record,) = _run(tmp_path, "task=gen_reversals", "strategy=icl_full", "budget=flops_1e15")
    details = record["adaptation"]["details"]
    assert details["mode"] == "full"
    n_pool = record["data"]["pool"]["n_pool"]
    # tiny-random's window is 1024 tokens: a reversal article is ~15 tokens, so the pool does not fit whole
    assert details["pool_documents"] == n_pool and 0 < details["shots_used"] < n_pool
    assert "holds" in record["adaptation"]["budget"]["stop_reason"]
    assert details["prefix_tokens"] <= 1024


def test_icl_vs_ft_page_on_records_with_known_outcomes(tmp_path):
    """The report page on hand-built cells: accuracy per arm (seeds averaged per item), each augmented arm's paired
    difference from FT and from full-context ICL with McNemar's p and Holm over the table, and the loss diagnostic."""
    from scipy.stats import binomtest
    from test_report import _record

    from baselines.icl_aug_report import generalization_table
    from harness import report, store

    ft = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0]  # 0.3
    aug = [1, 1, 1, 0, 1, 1, 0, 1, 1, 0]  # 0.7: 4 wins, 0 losses vs FT; 3 wins, 2 losses vs ICL
    icl = [1, 1, 0, 0, 1, 0, 1, 0, 1, 1]  # 0.6

    def cell(name, outcomes, seed, impl, strategy, losses=None, augment_flops=None):
        folder = _record(tmp_path / f"{name}{seed}", name, outcomes, seed=seed, task="gen_reversals", impl=impl)
        r = json.loads((folder / "record.json").read_text())
        r["config"]["strategy"].update(strategy)
        if losses:
            r["adaptation"]["details"] = {"losses": losses}
            r["costs"].insert(0, {"phase": "train", "flops_measured": 1000.0, "wall_s": 1.0})
        if augment_flops:
            r["costs"].insert(0, {"phase": "augment", "flops_measured": augment_flops, "wall_s": 1.0})
        store.write_json_atomic(folder / "record.json", r)

    cell("base", [0] * 10, 0, "base", {})
    cell("icl_full", icl, 0, "icl", {"mode": "full"})
    cell("lora", ft, 0, "lora", {}, losses=[4.0] * 5 + [3.0] * 10 + [2.0] * 5)
    cell("lora", ft, 1, "lora", {}, losses=[6.0] * 5 + [3.0] * 10 + [1.0] * 5)
    for seed in (0, 1):
        cell("icl_aug_ft_local", aug, seed, "icl_aug_ft", {"augment": {"kinds": ["local"], "generator": None}},
             losses=[5.0] * 5 + [1.0] * 5, augment_flops=3e9)
    page = generalization_table(report.collect(runs_dir=tmp_path))
    head, _, row = page.splitlines()[:3]
    assert head == ("| model | budget | task (split) | base | ICL (full context) | FT | aug: local | aug: local − FT "
                    "| aug: local − ICL (full context) |")
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[:3] == ["m", "b", "gen_reversals"]
    assert [c.split(" [")[0] for c in cols[3:7]] == ["0.000", "0.600", "0.300", "0.700"]
    assert cols[5].endswith("(2)") and cols[6].endswith("(2)") and cols[4].endswith("(1)")
    p_ft, p_icl = binomtest(0, 4, 0.5).pvalue, binomtest(2, 5, 0.5).pvalue  # 0.125 and 1.0
    assert (p_ft, p_icl) == (0.125, 1.0)
    assert cols[7] == "+0.400 (p 0.12; Holm 0.25)"  # Holm over the two: 2 · 0.125, then max(0.25, 1.0)
    assert cols[8] == "+0.100 (p 1; Holm 1)"
    costs = {line.split(" | ")[0].strip("| "): line for line in page.splitlines() if line.startswith("| ")}
    assert costs["FT"].endswith("| 5.00 → 1.50 |")  # first five steps: (4 + 6)/2; last five: (2 + 1)/2
    assert costs["aug: local"].endswith("| 5.00 → 1.00 |") and "| 3e+09 |" in costs["aug: local"]
    assert costs["base"].endswith("| — |")
