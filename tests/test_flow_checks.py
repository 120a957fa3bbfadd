"""The flows' checks: what the flow cannot honour is refused in one line before any work, and a
failed DVC stage becomes one line that says whether a retry may help."""
from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT, one_line_error, run_module
from tests.pipeline_project import tiny_project


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    p, env = tiny_project(tmp_path_factory.mktemp("flowchecks"))
    return p, env


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--set", "tokenize.max_vocab=10"], "overrides tokenize.max_vocab: the flow prepares data with `dvc repro`"),
        (["--set", "corpora.tiny.url=https://example.invalid/x"], "change them there"),
        (["--corpus", "nosuch"], "unknown corpus 'nosuch'"),
        (["--set", "train.hiden=3"], "train.hiden"),
        (["--set", "novalue"], "expected section.key=value"),
        (["--params", "absent.yaml"], "absent.yaml: not found"),
        (["--preset", "nope"], "--preset: unknown preset 'nope'"),  # named as given, not as --set
        (["--set", "train.hidden=-3"], "--set train.hidden: must be"),
        (["--set", "train={hidden: -3}"], "--set train.hidden: must be"),
    ],
)
def test_pipeline_flow_refuses_before_any_work(proj, args, expect):
    p, env = proj
    r = run_module("flows.pipeline_flow", "--corpus", "tiny", *args, cwd=p, env=env, timeout=120)
    assert r.returncode == 2 and expect in one_line_error(r), r.stderr[-2000:]
    assert not (p / "data").exists() and not (p / "outputs").exists()  # nothing ran


def test_flow_params_file_must_agree_with_params_yaml_on_the_data(proj, monkeypatch):
    from flows.pipeline_flow import flow_params
    from pipeline.errors import UserError

    p, _ = proj
    monkeypatch.chdir(p)
    raw = yaml.safe_load((p / "params.yaml").read_text())
    raw["train"]["hidden"] = 48  # a model setting: the flow's to choose
    del raw["data"]["timeout_s"]  # its default, as params.yaml sets it: the same data
    (p / "wider.yaml").write_text(yaml.safe_dump(raw))
    assert flow_params("wider.yaml", None, None).train.hidden == 48
    raw["onehot"]["train_frac"] = 0.5  # a data setting: dvc repro would not see it
    (p / "split.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"split\.yaml: onehot differ from params\.yaml"):
        flow_params("split.yaml", None, None)


def test_a_section_given_whole_is_merged_and_a_bad_value_named_as_given(proj, monkeypatch):
    """overrides {"train": {"cell": "gru"}} (a deployment's nested mapping, --set 'train={...}')
    is train.cell=gru: the section's other keys stay params.yaml's, not the code's defaults."""
    from flows.pipeline_flow import flow_params
    from pipeline.config import load_params
    from pipeline.errors import UserError

    p, _ = proj
    monkeypatch.chdir(p)
    base = load_params("params.yaml").train
    t = flow_params("params.yaml", None, {"train": {"cell": "gru", "hidden": 48}}).train
    assert (t.cell, t.hidden) == ("gru", 48)
    assert (t.max_steps, t.precision, t.dropout, t.warmup_steps) == (base.max_steps, base.precision, base.dropout, base.warmup_steps)
    with pytest.raises(UserError, match=r"^overrides train\.hidden: must be"):  # a deployment run's parameter
        flow_params("params.yaml", None, {"train.hidden": -1})
    with pytest.raises(UserError, match=r"^the preset parameter: unknown preset"):
        flow_params("params.yaml", "nope", {})


def test_flow_commands_say_in_one_line_that_no_prefect_api_answers(proj, http_server):
    """PREFECT_API_URL where nothing listens: exit 75 (may pass); an address that answers but
    is no Prefect API (the UI's, without /api): exit 2; both before any work."""
    from tests.conftest import free_port

    p, env = proj
    down = f"http://127.0.0.1:{free_port()}/api"
    for cmd in (["flows.pipeline_flow", "--corpus", "tiny"], ["flows.serve", "--corpus", "tiny"], ["flows.studies_flow", "--study", "hello"]):
        r = run_module(*cmd, cwd=p, env=dict(env, PREFECT_API_URL=down), timeout=120)
        assert r.returncode == 75 and f"no Prefect API answers at {down}" in one_line_error(r), r.stderr[-2000:]
    r = run_module("flows.pipeline_flow", "--corpus", "tiny", cwd=p, env=dict(env, PREFECT_API_URL=http_server[0]), timeout=120)
    assert r.returncode == 2 and "but not as a Prefect API" in one_line_error(r), r.stderr[-2000:]
    assert not (p / "data").exists() and not (p / "outputs").exists()  # nothing ran


def test_an_api_lost_during_a_run_is_told_apart_from_other_errors():
    """api_lost: an httpx error on a request to the API becomes the one line, saying whether
    the flow's body had finished; an error elsewhere (another host, a path beside /api, not
    httpx's) stays as it was."""
    import httpx

    from flows import api

    url = "http://127.0.0.1:4200/api"

    def refused(to):
        return httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("POST", to))

    api._finished.discard("f")
    lost = api.api_lost(refused(f"{url}/flow_runs/1/set_state"), url, "f", "the model")
    assert lost.exit_code == 75 and "the flow stopped there" in str(lost) and "ConnectError" in str(lost), lost
    api._finished.add("f")  # what mark_finished() does in the body of flow f
    lost = api.api_lost(refused(f"{url}/artifacts/"), url + "/", "f", "the model under outputs/")
    assert "the flow's work had finished (the model under outputs/)" in str(lost), lost
    assert "the flow's work had finished" not in str(api.api_lost(refused(f"{url}/artifacts/"), url, "g", "x"))
    for other in ("http://127.0.0.1:5000/api/2.0/mlflow/runs/get", "http://127.0.0.1:4200/apiary/x"):
        assert api.api_lost(refused(other), url, "f", "x") is None
    assert api.api_lost(ValueError("no"), url, "f", "x") is None
    assert api.api_lost(httpx.ConnectError("no request"), url, "f", "x") is None
    assert api.api_lost(refused(f"{url}/x"), None, "f", "x") is None  # no API set: the run's own server
    # the same API as httpx normalises its address; an HTTP answer of a live API is no lost API
    assert api.api_lost(refused("http://localhost:80/api/flow_runs/"), "http://LOCALHOST/api", "f", "x") is not None
    answered = httpx.HTTPStatusError("409", request=httpx.Request("POST", f"{url}/flow_runs/"), response=httpx.Response(409))
    assert api.api_lost(answered, url, "f", "x") is None
    # a body that raised keeps its error for run_here (which reports it, not the lost API's)

    # (in a flow run the names are the flow's: the end-to-end test in test_prefect.py reads them back)

    @api.watched
    def body(n):
        api.mark_finished()
        raise ValueError(n)

    api._finished.discard("")
    with pytest.raises(ValueError):
        body(3)  # outside a flow run: the name ""
    assert isinstance(api._raised[""], ValueError) and "" in api._finished and body.__wrapped__.__name__ == "body"


def test_check_refuses_a_music_corpus_and_a_missing_gpu():
    import torch

    from flows.pipeline_flow import check
    from pipeline.config import load_params
    from pipeline.errors import UserError

    params = load_params(ROOT / "params.yaml")
    with pytest.raises(UserError, match="'jsb_chorales' is music.*choose one of tinyshakespeare"):
        check("jsb_chorales", params)
    check("tinyshakespeare", params)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            check("tinyshakespeare", load_params(ROOT / "params.yaml", {"preset": "gpu"}))


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--cron", "0 3 * *"], "--cron '0 3 * *': not a cron schedule"),
        (["--cron", "* * * * * *"], "not a cron schedule; give five fields"),  # croniter: seconds, a run every second
        (["--cron", "0 3 * * * * *"], "not a cron schedule; give five fields"),
        (["--name", "a/b"], "--name 'a/b': a deployment name must be"),
        (["--name", ""], "--name '': a deployment name must be"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--set", "foo"], "expected section.key=value"),
        (["--corpus", "nosuch"], "unknown corpus 'nosuch'"),
        (["--set", "data.retries=1"], "overrides data.retries"),
    ],
)
def test_serve_refuses_before_registering(proj, args, expect):
    p, env = proj
    # no Prefect API anywhere: a check that came too late would fail otherwise
    r = run_module("flows.serve", *args, cwd=p, env=dict(env, PREFECT_API_URL="http://127.0.0.1:9/api"), timeout=120)
    assert r.returncode == 2 and expect in one_line_error(r), r.stderr[-2000:]


def test_artifact_keys_are_what_prefect_accepts():
    from flows.pipeline_flow import artifact_key

    from prefect.types.names import raise_on_name_alphanumeric_dashes_only as prefect_check

    for corpus in ("Tiny_Shakespeare.v2", "linux", "jsb_chorales", "__", "a--b"):
        prefect_check(artifact_key("metrics", corpus))  # raises on a key Prefect would refuse
    assert artifact_key("metrics", "Tiny_Shakespeare.v2") == "metrics-tiny-shakespeare-v2"
    assert artifact_key("samples", "linux") == "samples-linux"


def test_dvc_failure_is_one_line_and_says_whether_to_retry():
    from prefect.states import Failed

    from flows.dvc_stage import DvcCrashed, DvcFailed, failure, retry_transient

    stage = "error: HTTP 404 (Not Found) for http://127.0.0.1:1/x.txt; check the corpus url in params.yaml\n"
    dvc = "ERROR: failed to reproduce 'download@t': failed to run: python -m pipeline.download t, exited with {}\n"
    f = failure(("repro", "download@t"), 255, stage + dvc.format(2), "Running stage 'download@t':\n")
    assert str(f) == "HTTP 404 (Not Found) for http://127.0.0.1:1/x.txt; check the corpus url in params.yaml (dvc repro download@t, stage exit 2)"
    assert not f.retryable and f.exit_code == 2
    f = failure(("repro", "download@t"), 255, "error: download of u failed 5 times\n" + dvc.format(75))
    assert f.retryable and f.exit_code == 75
    f = failure(("repro", "x"), 255, "ERROR: Unable to acquire lock. Most likely another DVC process is running\n")
    assert f.retryable and str(f).startswith("Unable to acquire lock")
    f = failure(("repro", "x"), 255, "Traceback (most recent call last):\n  File \"x.py\"\nKeyError: 'x'\n" + dvc.format(1))
    assert isinstance(f, DvcCrashed) and not f.retryable  # a bug: its traceback kept, not a user's one line
    assert "stage crashed" in str(f) and "KeyError: 'x'" in str(f) and 'File "x.py"' in str(f)
    assert str(failure(("repro",), 1, "", "")) == "exit code 1 (dvc repro)"
    import pickle

    back = pickle.loads(pickle.dumps(failure(("repro", "download@t"), 255, "error: x\n" + dvc.format(75))))
    assert back.retryable and back.exit_code == 75 and str(back) == "x (dvc repro download@t, stage exit 75)"  # as Prefect persists it
    # the download task's retry condition, on Prefect's own Failed states
    for exc, retry in ((DvcFailed("a", True), True), (DvcFailed("b"), False), (DvcCrashed("c"), False), (OSError("d"), True)):
        assert retry_transient(None, None, Failed(data=exc)) is retry, exc


def test_studies_flow_runs_what_studies_dvc_yaml_runs():
    """Every study stage of studies/dvc.yaml is a study of the flow, with the same module,
    overrides and report folder."""
    import shlex

    from flows.studies_flow import SPECS
    from pipeline.config import parse_sets

    stages = yaml.safe_load((ROOT / "studies/dvc.yaml").read_text())["stages"]
    assert set(SPECS) == set(stages) - {"review"}
    for name, (module, overrides, folder, _) in SPECS.items():
        argv = shlex.split(stages[name]["cmd"])
        assert argv[:3] == ["python", "-m", f"studies.{module}"], name
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        assert parse_sets(sets) == overrides, name
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages[name]["outs"]]
        assert outs == [f"reports/{folder}"], name


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--preset", "fulll"], "studies.preset: unknown preset 'fulll'; choose default or one of studies.presets (full)"),
        (["--params", "absent.yaml"], "absent.yaml: not found"),
        (["--study", "bptt"], "studies.bptt.hiden: unknown key"),
    ],
)
def test_studies_flow_refuses_before_any_work(tmp_path, args, expect):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if "--study" in args:  # a later study's typo stops the flow before the first study runs
        raw["studies"]["bptt"]["hiden"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    r = run_module("flows.studies_flow", "--study", "hello", *args, cwd=tmp_path, env={"PREFECT_API_URL": "http://127.0.0.1:9/api"}, timeout=120)
    assert r.returncode == 2 and expect in one_line_error(r), r.stderr[-2000:]
    assert not (tmp_path / "reports").exists()


def test_studies_preset_null_is_default_and_a_malformed_presets_is_one_line():
    from pipeline.config import load_params
    from pipeline.errors import UserError
    from studies.common import preset_section

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert preset_section(load_params(ROOT / "params.yaml", {"studies.preset": None}), "bptt") == raw["studies"]["bptt"]
    full = preset_section(load_params(ROOT / "params.yaml", {"studies.preset": "full"}), "bptt")
    assert full == {**raw["studies"]["bptt"], **raw["studies"]["presets"]["full"]["bptt"]}
    with pytest.raises(UserError, match=r"unknown preset 'full'; choose default or one of studies.presets \(none\)"):
        preset_section(load_params(ROOT / "params.yaml", {"studies.preset": "full", "studies.presets": ["full"]}), "bptt")
    with pytest.raises(UserError, match=r"studies.presets.full: must map study names"):
        preset_section(load_params(ROOT / "params.yaml", {"studies.preset": "full", "studies.presets.full": ["bptt"]}), "bptt")
