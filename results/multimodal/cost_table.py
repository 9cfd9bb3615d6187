"""The multimodal pipeline check's cost table, from the finished records of `harness run experiment=multimodal`.

    python results/multimodal/cost_table.py RUNS_DIR > results/multimodal/costs.md

Per arm: the phases it ran with their measured and analytic FLOPs (and their ratio), and what evaluation saw of
the images: images, image tokens (part of the prompt tokens), the vision tower's patches and analytic FLOPs.
"""
import json
import sys
from pathlib import Path


def main(runs: Path) -> None:
    rows = []
    for path in sorted(runs.glob("*/mathvision/*/record.json")):
        record = json.loads(path.read_text())
        strategy = record["cell"]["strategy"]
        for cost in record["costs"]:
            d = cost["details"]
            ratio = cost["flops_measured"] / cost["flops_analytic"] if cost["flops_analytic"] else float("nan")
            shared = f" (shared by {cost['shared_by']})" if cost.get("shared_by") else ""
            prompt = f" of {d['prompt_tokens']}" if "prompt_tokens" in d else ""
            images = (f"{d['images']} | {d['image_tokens']}{prompt} | {d['vision_patches']} | "
                      f"{d['vision_flops_analytic']:.3g}") if "images" in d else "— | — | — | —"
            rows.append(f"| {strategy} | {cost['phase']}{shared} | {cost['wall_s']:.1f} | {cost['flops_measured']:.3g} "
                        f"| {cost['flops_analytic']:.3g} | {ratio:.3f} | {cost['tokens']} | {images} |")
    print("| strategy | phase | wall s | FLOPs measured | FLOPs analytic | measured / analytic | tokens | images | "
          "image tokens (of prompt tokens) | vision patches | vision FLOPs (analytic) |")
    print("|" + "---|" * 11)
    print("\n".join(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
