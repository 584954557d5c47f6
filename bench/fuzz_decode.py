"""Fuzz figures: mutated real photos (tests/fuzzing.py, fixed seed) through ``decode_image``, counted by outcome.

Each mutant is decoded, rejected (``RejectedImage``: quarantined with that reason), or escapes with another
exception (which would fail the whole micro-batch, not one photo). ``--against REV`` runs the same mutants through
``fruits/model/images.py`` as it was at git revision REV too, for a before/after comparison.

Usage: python bench/fuzz_decode.py [--count 1000] [--seed 11] [--against 7b79d90]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import SAMPLE  # noqa: E402
from fuzzing import mutants, reason_class  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from honest import Honest  # noqa: E402


def load_images_module(revision: str | None):
    if revision is None:
        import fruits.model.images

        return fruits.model.images
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:fruits/model/images.py"], capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "images_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("images_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(module, count: int, seed: int) -> collections.Counter:
    photos = sorted(SAMPLE.glob("*/*.jpg"))[::25]
    outcomes: collections.Counter = collections.Counter()
    for kind, _, data in mutants(photos, count, seed):
        try:
            module.decode_image(data)
            outcomes["decoded"] += 1
        except module.RejectedImage as exc:
            outcomes[f"quarantined: {reason_class(str(exc))}"] += 1
        except Exception as exc:  # escapes decode_image
            outcomes[f"ESCAPED ({kind}): {type(exc).__name__}"] += 1
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--against", help="git revision whose fruits/model/images.py to run as well")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)
    warnings.simplefilter("ignore")
    for label, revision in [("this tree", None)] + ([(args.against, args.against)] if args.against else []):
        outcomes = run(load_images_module(revision), args.count, args.seed)
        escaped = sum(n for name, n in outcomes.items() if name.startswith("ESCAPED"))
        print(f"== {label}: {args.count} mutants (seed {args.seed}), {escaped} escaped decode_image")
        for name, n in outcomes.most_common():
            print(f"{n:6d}  {name}")
        honest.ratio(f"{label}: escaped decode_image / mutants = {escaped / max(args.count, 1):.4f}")
    honest.finish()


if __name__ == "__main__":
    main()
