"""The data stages under real DVC (git init + dvc init in tmp_path), fed by the offline mirror."""
from __future__ import annotations

import json

import numpy as np

from tests.conftest import dvc, make_project


def test_dvc_repro_data_stages_from_mirror(tmp_path, need_mirror):
    proj = make_project(tmp_path / "proj")
    env = {"CORPUS_MIRROR": str(need_mirror)}
    r = dvc(proj, "repro", "onehot@tinyshakespeare", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((proj / "data/onehot/tinyshakespeare/meta.json").read_text())
    assert meta["vocab_size"] == 65 and meta["splits"] == {"train": 1_003_854, "val": 111_540, "test": 0}
    assert np.load(proj / "data/onehot/tinyshakespeare/train.npy").dtype == np.uint8
    assert meta["corpus_sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

    # every corpus reproduces from the mirror (the foreach group runs all of them)
    r = dvc(proj, "repro", "onehot", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    stacks = json.loads((proj / "data/onehot/stacks/meta.json").read_text())
    assert stacks["corpus_bytes"] == 27_680_851
    linux = json.loads((proj / "data/onehot/linux/meta.json").read_text())
    assert linux["corpus_bytes"] == 31_650_334
    jsb = json.loads((proj / "data/onehot/jsb_chorales/meta.json").read_text())
    assert {s: v["frames"] for s, v in jsb["splits"].items()} == {"train": 13_807, "val": 4_602, "test": 4_725}
    assert [v["sequences"] for v in jsb["splits"].values()] == [229, 76, 77]
    roll = np.load(proj / "data/onehot/jsb_chorales/train.npy")
    assert roll.shape == (13_807, 88) and roll.dtype == np.uint8 and roll.max() == 1

    # nothing changed: a no-op; a tokenize param change reruns tokenize+onehot, not download
    r = dvc(proj, "repro", "onehot@tinyshakespeare", env=env)
    assert "didn't change" in r.stdout and "Running stage" not in r.stdout
    params = (proj / "params.yaml").read_text().replace("level: char", "level: byte")
    (proj / "params.yaml").write_text(params)
    r = dvc(proj, "repro", "onehot@tinyshakespeare", env=env)
    assert "Running stage 'tokenize@tinyshakespeare'" in r.stdout
    assert "Running stage 'onehot@tinyshakespeare'" in r.stdout
    assert "Running stage 'download@tinyshakespeare'" not in r.stdout
    assert json.loads((proj / "data/onehot/tinyshakespeare/meta.json").read_text())["level"] == "byte"
