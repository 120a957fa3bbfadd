"""Stage `sample@<corpus>`: text from the trained model -> samples/<corpus>.txt.

    python -m pipeline.sample tinyshakespeare           # settings from params.yaml `sample:`

`sample_text` also serves `python -m flows.sample`, which takes a checkpoint path or a
registered MLflow model (models:/charlm-<corpus>/<version> or /latest, or
models:/charlm-<corpus>@<alias> for an alias set in the MLflow UI).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.config import Params, SampleParams, load_params, parse_sets
from pipeline.errors import UserError, cli
from pipeline.evaluate import check_torch_device, load_model, model_dir
from pipeline.train import MODELS

SAMPLES = Path("samples")


def sample_text(ckpt: Path, sp: SampleParams, argmax: bool = False, device: str = "cpu") -> list[str]:
    """n samples of sp.length tokens after sp.prime from a checkpoint; errors are UserErrors."""
    from lightning_modules.sampling import MIN_TEMPERATURE, generate

    argmax = argmax or sp.argmax
    if not argmax and not sp.temperature >= MIN_TEMPERATURE:
        raise UserError(f"temperature must be >= {MIN_TEMPERATURE}, got {sp.temperature}; set sample.argmax (flows.sample: --argmax) for greedy decoding")
    check_torch_device(device)
    model, vocab, _ = load_model(ckpt, device)
    try:
        return generate(model.to(device), vocab, sp.prime, sp.length, temperature=sp.temperature, top_k=sp.top_k, argmax=argmax, n=sp.n, seed=sp.seed)
    except ValueError as e:
        raise UserError(str(e)) from None


def format_samples(texts: list[str]) -> str:
    if len(texts) == 1:
        return texts[0] if texts[0].endswith("\n") else texts[0] + "\n"
    return "".join(f"===== sample {i + 1} =====\n{t}\n" for i, t in enumerate(texts))


def sample(corpus: str, params: Params, models_root: Path = MODELS, samples_root: Path = SAMPLES) -> Path:
    d, run = model_dir(corpus, models_root, params)
    text = format_samples(sample_text(d / "best.ckpt", params.sample))
    out = samples_root / f"{corpus}.txt"
    write_text(out, text)
    mlf = run.get("mlflow")
    if params.tracking.enabled and mlf:
        from pipeline import tracking

        tracking.add_to_run(mlf, [out], tags={f"sample.{k}": str(v) for k, v in vars(params.sample).items()}, params=params)
    return out


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a param (repeatable)")
    a = ap.parse_args(argv)
    out = sample(a.corpus, load_params(a.params, parse_sets(a.set)))
    print(f"{a.corpus}: {out.stat().st_size:,} bytes of samples -> {out}")


if __name__ == "__main__":
    main()
