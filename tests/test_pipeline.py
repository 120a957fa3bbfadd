"""The whole pipeline under real DVC and a real MLflow sqlite store: repro, metrics, plots, params, models."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import dvc, one_line_error, run_module
from tests.pipeline_project import tiny_project


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    proj, env = tiny_project(tmp_path_factory.mktemp("pipe"))
    r = dvc(proj, "repro", "evaluate@tiny", "sample@tiny", env=env)  # what `make run` runs
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return proj, env, r


def test_repro_end_to_end_outputs(repro):
    proj, env, r = repro
    for stage in ("download", "tokenize", "onehot", "train", "evaluate", "sample"):
        assert f"Running stage '{stage}@tiny'" in r.stdout
    ev = json.loads((proj / "metrics/tiny/eval.json").read_text())
    assert 0 < ev["val_loss"] < 3.0 and ev["val_bpc"] == pytest.approx(ev["val_loss"] / 0.6931471805599453, rel=1e-3)
    run = json.loads((proj / "models/tiny/run.json").read_text())
    assert run["steps"] == 30 and run["mlflow"]["registered"] == "charlm-tiny version 1"
    assert run["mlflow"]["tracking_uri"] == "sqlite:///mlflow.db"  # the project's store, relative: a copy of models/ elsewhere names its own
    from lightning_modules.precision import resolve_precision

    # params.yaml's `precision: auto`, recorded as what trained on this CPU
    assert run["precision_setting"] == "auto" and run["train"]["precision"] == resolve_precision("auto", "cpu")
    assert run["cpu"]["bf16_kernels"] in ("amx", "avx512_bf16", "none") and run["cpu"]["model"]
    assert (proj / "samples/tiny.txt").read_text().startswith("ROMEO:")
    assert (proj / "plots/tiny/loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    lines = (proj / "plots/tiny/train_loss.csv").read_text().splitlines()
    assert lines[0] == "step,train_loss" and len(lines) == 1 + 30 // 5
    st = dvc(proj, "status", env=env)
    assert "up to date" in st.stdout, st.stdout


def test_dvc_metrics_and_plots(repro):
    proj, env, _ = repro
    m = dvc(proj, "metrics", "show", env=env)
    assert m.returncode == 0 and "val_loss" in m.stdout and "metrics/tiny/eval.json" in m.stdout
    p = dvc(proj, "plots", "show", "-o", str(proj / "dvc_plots"), env=env)
    assert p.returncode == 0, p.stderr
    html = (proj / "dvc_plots/index.html").read_text()
    assert "train_loss" in html and "val_loss" in html


def test_mlflow_store_holds_the_run(repro):
    import mlflow

    from lightning_modules.precision import cpu_bf16_kernels, cpu_model

    proj, env, _ = repro
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("charlm-tiny")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["train.cell"] == "lstm" and run.data.params["train.hidden"] == "32"
    assert run.data.params["train.precision"] in ("bf16-mixed", "32-true")
    assert len(run.data.params["data.sha256"]) == 64 and int(run.data.params["data.vocab_size"]) > 10
    assert run.data.tags["sys.device"] == "cpu" and run.data.tags["sys.torch"].startswith("2.")
    assert run.data.tags["sys.cpu_bf16_kernels"] == cpu_bf16_kernels() and run.data.tags["sys.cpu"] == cpu_model()
    hist = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in hist] == list(range(0, 30, 5)) and hist[-1].value < hist[0].value
    stamps = [m.timestamp for m in hist]  # when each step ran, not when its batch was sent (two sends here)
    assert stamps == sorted(stamps) and len(set(stamps)) > 2
    val = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in val] == [15, 30]
    assert "eval_val_loss" in run.data.metrics and "val_bpc" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"vocab.json", "loss_curve.png", "tiny.txt", "eval.json", "train_loss.csv"} <= arts
    mv = client.get_model_version("charlm-tiny", "1")
    assert mv.run_id == run.info.run_id
    # the UI tells runs and versions apart: a description, the version's tags, the model's metrics
    best = run.data.metrics["best_val_loss"]
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("lstm 1x32 on tiny") and f"best val_loss {best:.4f}" in note and "after 30 steps" in note
    assert mv.description == note and mv.tags["best_val_loss"] == f"{best:.4f}" and mv.tags["steps"] == "30"
    (logged,) = client.search_logged_models([exp.experiment_id])
    on_model = {m.key: m for m in logged.metrics}  # the run's metrics of the last step, not the untrained step 0
    assert {"val_loss", "best_val_loss"} <= on_model.keys() and {m.step for m in on_model.values()} == {30}
    assert logged.tags["size"] == "1x32" and str(logged.status).endswith("READY")
    # what decided the data the model saw, and the code that trained it
    assert run.data.params["data.level"] == "char" and run.data.params["tokenize.level"] == "char"
    assert float(run.data.params["onehot.val_frac"]) > 0
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == head and run.data.tags["mlflow.source.name"] == "pipeline.train"
    assert run.data.tags["sample.prime"] == "ROMEO:" and run.data.tags["sample.length"] == "200"  # how tiny.txt was made
    # evaluate logs its scores once, and not the training's own numbers again
    assert not [k for k in run.data.metrics if k.startswith("eval_train")]
    assert len(client.get_metric_history(run.info.run_id, "eval_val_loss")) == 1
    # the first scored version is the registry's champion, tagged with its score on the val split
    champ = client.get_model_version_by_alias("charlm-tiny", "champion")
    ev = json.loads((proj / "metrics/tiny/eval.json").read_text())
    assert str(champ.version) == "1" and champ.tags["eval_val_loss"] == f"{ev['val_loss']:.5f}" and len(champ.tags["score_key"]) == 16


def test_sample_from_registered_model_and_checkpoint(repro):
    import mlflow

    proj, env, _ = repro
    mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).set_registered_model_alias("charlm-tiny", "reviewed", "1")  # as in the UI
    for model in ("models:/charlm-tiny/latest", "models:/charlm-tiny@champion", "models:/charlm-tiny@reviewed", "models/tiny/best.ckpt"):
        p = run_module("flows.sample", "--model", model, "--prime", "JULIET:", "--length", "60", "--seed", "3", cwd=proj, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        assert p.stdout.startswith("JULIET:") and len(p.stdout) >= 60
    e = one_line_error(run_module("flows.sample", "--model", "models/tiny/best.ckpt", "--temperature", "0", cwd=proj, env=env))
    assert "temperature must be >= 0.001, got 0.0" in e and "--argmax" in e
    p = run_module("flows.sample", "--model", "models/tiny/best.ckpt", "--argmax", "--temperature", "0", "--length", "20", cwd=proj, env=env)
    assert p.returncode == 0 and len(p.stdout) >= 20, p.stderr[-2000:]  # greedy decoding ignores the temperature
    e = one_line_error(run_module("flows.sample", "--model", "models/tiny/best.ckpt", "--prime", "Zebra#", cwd=proj, env=env))
    assert "missing from the vocabulary" in e and "'#'" in e
    e = one_line_error(run_module("flows.sample", "--model", "models:/charlm-nosuch/1", cwd=proj, env=env))
    assert "charlm-nosuch" in e and env["MLFLOW_TRACKING_URI"] in e  # names the store it looked in
    e = one_line_error(run_module("flows.sample", "--model", "params.yaml", cwd=proj, env=env))
    assert "params.yaml: not a PyTorch checkpoint" in e
    e = one_line_error(run_module("flows.sample", "--model", "models/tiny/best.ckpt", "--top-k", "-3", cwd=proj, env=env))
    assert "--top-k must be >= 0" in e and "-3" in e
    import torch

    if not torch.cuda.is_available():
        e = one_line_error(run_module("flows.sample", "--model", "models/tiny/best.ckpt", "--device", "cuda", cwd=proj, env=env))
        assert "no CUDA device" in e and "--device cpu" in e
    e = one_line_error(run_module("flows.sample", "--model", "models/tiny/best.ckpt", "--device", "gpu", cwd=proj, env=env))
    assert "--device gpu: not a device" in e  # it blamed the checkpoint
    # the stages take --set as train does; a damaged checkpoint is one line for evaluate as for sample
    before = (proj / "samples/tiny.txt").read_bytes()
    p = run_module("pipeline.sample", "tiny", "--set", "sample.length=30", "--set", "sample.prime=JULIET:", cwd=proj, env=env)
    assert p.returncode == 0 and (proj / "samples/tiny.txt").read_text().startswith("JULIET:"), p.stderr[-2000:]
    (proj / "samples/tiny.txt").write_bytes(before)
    ckpt = proj / "models/tiny/best.ckpt"
    good = ckpt.read_bytes()
    try:
        ckpt.write_bytes(good[:1000])
        for stage in ("pipeline.evaluate", "pipeline.sample"):
            e = one_line_error(run_module(stage, "tiny", cwd=proj, env=env))
            assert "best.ckpt: cannot load the checkpoint" in e and "train again" in e, (stage, e)
    finally:
        ckpt.write_bytes(good)
    # the store named only by params.yaml's tracking.uri, as pipeline.train found it
    import yaml

    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["tracking"]["uri"] = env["MLFLOW_TRACKING_URI"]
    (proj / "tracking-params.yaml").write_text(yaml.safe_dump(p))
    no_env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    args = ("flows.sample", "--model", "models:/charlm-tiny/latest", "--prime", "JULIET:", "--length", "20", "--seed", "3")
    elsewhere = proj.parent / "elsewhere"  # run from another folder: ./mlflow.db is not the store
    elsewhere.mkdir(exist_ok=True)
    e = one_line_error(run_module(*args, "--params", "no-such.yaml", cwd=elsewhere, env=no_env))
    assert "--params no-such.yaml: not found" in e
    e = one_line_error(run_module(*args, cwd=elsewhere, env=no_env))  # no params.yaml here, no store here
    assert f"no MLflow store at {elsewhere.resolve() / 'mlflow.db'}" in e
    assert not (elsewhere / "mlflow.db").exists()  # none made on the way
    p = run_module(*args, "--params", proj / "tracking-params.yaml", cwd=elsewhere, env=no_env)
    assert p.returncode == 0 and p.stdout.startswith("JULIET:"), p.stderr[-2000:]


def test_param_change_reruns_exactly_what_depends_on_it(repro):
    proj, env, _ = repro
    text = (proj / "params.yaml").read_text().replace("temperature: 0.8", "temperature: 0.5")
    (proj / "params.yaml").write_text(text)
    r = dvc(proj, "repro", "sample@tiny", env=env)
    assert r.returncode == 0, r.stderr
    ran = [l for l in r.stdout.splitlines() if l.startswith("Running stage")]
    assert ran == ["Running stage 'sample@tiny':"], ran


def test_dvc_exp_run_with_a_cell_override(repro):
    proj, env, _ = repro
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], cwd=proj, check=True)
    r = dvc(proj, "exp", "run", "-S", "train.cell=gru", "-S", "train.max_steps=15", env=env)  # as in the README
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    show = dvc(proj, "exp", "show", "--no-pager", "--csv", env=env)
    assert "gru" in show.stdout and "val_loss" in show.stdout
    import mlflow  # the experiment's model is version 2; @champion is whichever scored lower

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    scored = {str(v.version): float(v.tags["eval_val_loss"]) for v in client.search_model_versions("name='charlm-tiny'")}
    assert set(scored) == {"1", "2"} and str(client.get_model_version_by_alias("charlm-tiny", "champion").version) == min(scored, key=scored.get)


def test_bad_params_are_one_line_errors(tmp_path):
    proj, env = tiny_project(tmp_path)
    params = (proj / "params.yaml").read_text()
    cases = {
        "cell: lstm": ("cell: lstmx", "train.cell: must be one of"),
        "hidden: 32": ("hidden: -3", "train.hidden: must be > 0, got -3"),
        "seq_len: 32": ("seq_len: 32\n  seqlen: 3", "train.seqlen: unknown key"),
        "preset: cpu": ("preset: tpu", "preset: unknown preset 'tpu'"),
    }
    for old, (new, expect) in cases.items():
        assert old in params, old
        (proj / "params.yaml").write_text(params.replace(old, new, 1))
        assert expect in one_line_error(run_module("pipeline.train", "tiny", cwd=proj, env=env))
    (proj / "params.yaml").write_text(params)
    assert "dvc repro onehot@tiny" in one_line_error(run_module("pipeline.train", "tiny", cwd=proj, env=env))
    assert "train first" in one_line_error(run_module("pipeline.sample", "tiny", cwd=proj, env=env))
    assert "--set" in one_line_error(run_module("pipeline.train", "tiny", "--set", "nonsense", cwd=proj, env=env))
    for stage in ("pipeline.train", "pipeline.evaluate", "pipeline.sample"):  # not `dvc repro onehot@nosuch`, which has no stage
        assert "unknown corpus 'nosuch'; declared in params.yaml: tiny" in one_line_error(run_module(stage, "nosuch", cwd=proj, env=env))
    e = one_line_error(run_module("pipeline.train", "tiny", "--set", "train.max_steps=10", "--set", "train.warmup_steps=50", cwd=proj, env=env))
    assert "train.max_steps: 10 steps leave none after train.warmup_steps=50" in e and "lower warmup_steps" in e
    e = one_line_error(run_module("pipeline.train", "tiny", "--set", "train.hidden=-3", cwd=proj, env=env))
    assert e == "error: --set train.hidden: must be > 0, got -3"  # the command line's value, not params.yaml's
    e = one_line_error(run_module("pipeline.evaluate", "tiny", "--params", "nope.yaml", cwd=proj, env=env))
    assert e.endswith("nope.yaml: not found; run from the project root")  # it was told --params already
    import torch

    if not torch.cuda.is_available():
        assert dvc(proj, "repro", "onehot@tiny", env=env).returncode == 0
        e = one_line_error(run_module("pipeline.train", "tiny", "--set", "preset=gpu", cwd=proj, env=env))
        assert "no CUDA device is visible" in e
    # evaluation needs eval_batch streams of a token each: a val split too short is one line, before training
    e = one_line_error(run_module("pipeline.train", "tiny", "--set", "train.eval_batch=100000", cwd=proj, env=env))
    assert "the val split has" in e and "train.eval_batch=100000" in e and "lower train.eval_batch" in e
    e = one_line_error(run_module("pipeline.train", "tiny", "--set", "sample.temperature=0.0001", cwd=proj, env=env))
    assert "sample.temperature: must be >= 0.001, got 0.0001" in e and "sample.argmax" in e
    from pipeline.config import load_params

    assert load_params(proj / "params.yaml", {"sample.argmax": True, "sample.temperature": 0.0}).sample.argmax  # greedy: no T needed
    from lightning_modules.sampling import MIN_TEMPERATURE
    from pipeline.config import MIN_TEMPERATURE as PARAMS_MIN

    assert PARAMS_MIN == MIN_TEMPERATURE  # the params check and the sampler agree (config imports no torch)


def test_train_runs_on_a_bare_box_without_matplotlib(repro, tmp_path, monkeypatch, capsys):
    """A GPU box may have torch and Lightning only: with tracking off, training still ends
    cleanly (model, run.json, CSV curves), skipping only the PNG, and says so. (matplotlib
    cannot be uninstalled for one test: its import in our plotting is made to fail as it
    does on such a box.)"""
    import shutil

    import pipeline.curves
    from pipeline.config import load_params, parse_sets
    from pipeline.train import train

    proj, _, _ = repro
    work = tmp_path / "proj"
    shutil.copytree(proj, work, ignore=shutil.ignore_patterns(".dvc", ".git", "mlruns", "*.db"))
    (work / "plots/tiny/loss_curve.png").unlink()
    monkeypatch.chdir(work)

    def no_matplotlib(*args, **kw):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(pipeline.curves, "plot_curves", no_matplotlib)
    s = train("tiny", load_params("params.yaml", parse_sets(["tracking.enabled=false", "train.max_steps=10"])))
    assert s["steps"] == 10 and "matplotlib is not installed" in capsys.readouterr().err
    assert json.loads((work / "models/tiny/run.json").read_text())["steps"] == 10
    assert (work / "plots/tiny/val_loss.csv").is_file() and not (work / "plots/tiny/loss_curve.png").exists()

    def other_missing(*args, **kw):
        raise ModuleNotFoundError("No module named 'PIL'", name="PIL")

    monkeypatch.setattr(pipeline.curves, "plot_curves", other_missing)  # anything else still fails loudly
    with pytest.raises(ModuleNotFoundError, match="PIL"):
        train("tiny", load_params("params.yaml", parse_sets(["tracking.enabled=false", "train.max_steps=10"])))
