"""The Lightning language model: 1-of-k input, BPTT and TBPTT, exact resume, DDP, checkpoints, sampling."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.checkpoint import load_checkpoint
from lightning_modules.lm import CharRNN
from lightning_modules.onehot import OneHotInput, onehot
from lightning_modules.sampling import generate, sample_ids
from lightning_modules.train import evaluate, fit
from lightning_modules.vocab import Vocab

TINY = dict(hidden=32, layers=2, batch_size=8, seq_len=32, val_every=20, progress_every=0, accelerator="cpu", eval_batch=4, eval_len=256, lr=1e-2)


def test_onehot_input_is_a_column_lookup():
    torch.manual_seed(0)
    V, E = 11, 5
    W = torch.randn(E, V)
    x = torch.tensor([[3, 0, 10], [7, 7, 1]])
    oh = onehot(x, V)
    assert oh.shape == (2, 3, V) and oh.sum(-1).eq(1).all() and oh.argmax(-1).equal(x)
    assert torch.allclose(oh @ W.T, W[:, x].permute(1, 2, 0))  # W . onehot(x) = W[:, x]
    inp, emb = OneHotInput(V, E), torch.nn.Embedding(V, E)
    emb.load_state_dict(inp.state_dict())
    assert torch.allclose(inp(x), emb(x))
    m1, m2 = CharRNN(V, hidden=8, input="onehot"), CharRNN(V, hidden=8, input="embedding")
    m2.load_state_dict(m1.state_dict())
    assert torch.allclose(m1(x)[0], m2(x)[0], atol=1e-6)


def test_full_bptt_learns_and_evaluates(corpus, tmp_path):
    import logging
    import warnings

    lines = []
    seen = logging.Handler()
    seen.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addHandler(seen)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = fit(dict(TINY, max_steps=60), corpus, tmp_path / "ckpt")
    finally:
        logging.getLogger("lightning.pytorch.utilities.rank_zero").removeHandler(seen)
    # the log keeps Lightning's own lines and loses its cloud-logger advertisement and its pytree deprecation
    assert any("GPU available" in x for x in lines) and not any("litlogger" in x for x in lines), lines
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    V = 30  # about the toy vocabulary; ln V is the loss of a uniform guess
    assert r["best_val_loss"] < 0.6 * math.log(V)
    assert (tmp_path / "ckpt/best.ckpt").exists() and (tmp_path / "ckpt/last.ckpt").exists()
    ev = evaluate(tmp_path / "ckpt/best.ckpt", corpus, device="cpu", eval_batch=4, eval_len=256)
    assert abs(ev["val_loss"] - r["best_val_loss"]) < 1e-4
    assert ev["val_bpc"] == pytest.approx(ev["val_loss"] / math.log(2))
    assert ev["val_tokens"] >= 6000 - 4


def test_tbptt_window_and_carry(corpus):
    from lightning_modules.module import CharLM

    torch.manual_seed(0)
    m = CharLM(vocab_size=40, hidden=16, layers=1, bptt="tbptt", k1=4, k2=10)
    x = torch.randint(0, 40, (3, 4))
    y = torch.randint(0, 40, (3, 4))
    m._tbptt_loss(x, y, reset=True)
    assert m._carry[0].shape == (3, 4)  # first window: only the K1 new tokens
    for _ in range(3):
        prev_ctx, prev_state = m._carry
        loss = m._tbptt_loss(x, y, reset=False)
        window = torch.cat([prev_ctx, x], 1)
        logits, _ = m.model(window, prev_state)
        expect = torch.nn.functional.cross_entropy(logits[:, -4:].reshape(-1, 40), y.reshape(-1))
        assert torch.allclose(loss, expect)
        # gradient reaches the oldest token of a full K2 window
        if window.shape[1] == 10:
            emb = m.model.encoder.weight
            g = torch.autograd.grad(loss, emb)[0]
            assert g[window[:, 0]].abs().sum() > 0
            assert m._carry[0].shape == (3, 6)  # K2 - K1 tokens of context kept
    loss = m._tbptt_loss(x, y, reset=True)  # a new pass starts from zeros
    assert m._carry[0].shape == (3, 4)
    with pytest.raises(ValueError, match="k1 <= k2"):
        CharLM(vocab_size=5, bptt="tbptt", k1=8, k2=4)


@pytest.mark.parametrize("cell", ["lstm", "lstm-v"])
def test_tbptt_window_draws_one_weight_drop_mask(cell):
    """A K2 window run as two calls (K1 < K2) is regularised as one call over the window:
    one DropConnect mask on W_hh, so its loss is the single call's under the same seed."""
    from lightning_modules.module import CharLM

    torch.manual_seed(0)
    m = CharLM(vocab_size=30, cell=cell, hidden=16, layers=2, dropout=0.0, bptt="tbptt", k1=3, k2=7, weight_drop=0.5).train()
    x = torch.randint(0, 30, (2, 3))
    y = torch.randint(0, 30, (2, 3))
    m._tbptt_loss(x, y, reset=True)
    for _ in range(3):
        ctx, state = m._carry
        torch.manual_seed(5)
        loss = m._tbptt_loss(x, y, reset=False)
        torch.manual_seed(5)
        logits, _ = m.model(torch.cat([ctx, x], 1), state)
        expect = torch.nn.functional.cross_entropy(logits[:, -3:].reshape(-1, 30), y.reshape(-1))
        assert torch.allclose(loss, expect, atol=1e-6)


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize("regime", [dict(bptt="full", dropout=0.2), dict(bptt="tbptt", k1=8, k2=16, dropout=0.2)])
def test_exact_resume(corpus, tmp_path, regime):
    cfg = dict(TINY, max_steps=24, val_every=12, **regime)
    straight = fit(cfg, corpus, tmp_path / "a")
    half = fit(cfg, corpus, tmp_path / "b", stop_at=12)
    assert half["steps"] == 12
    resumed = fit(cfg, corpus, tmp_path / "c", resume=str(tmp_path / "b/last.ckpt"))
    assert straight["steps"] == resumed["steps"] == 24
    per_step = cfg["batch_size"] * (cfg["seq_len"] if cfg["bptt"] == "full" else cfg["k1"])
    # tokens/s counts the 12 steps this call trained, not the 12 before the resume
    assert resumed["train_tokens_per_s"] * resumed["train_seconds"] == pytest.approx(12 * per_step)
    a, c = _weights(tmp_path / "a/last.ckpt"), _weights(tmp_path / "c/last.ckpt")
    for k in a:
        assert torch.equal(a[k], c[k]), k


def test_ddp_two_ranks_equal_one_rank(corpus, tmp_path):
    cfg = dict(TINY, max_steps=6, val_every=3, dropout=0.0, lr=3e-3)
    one = fit(cfg, corpus, tmp_path / "one")
    two = fit(dict(cfg, strategy="ddp_spawn", devices=2), corpus, tmp_path / "two")
    a, b = _weights(tmp_path / "one/last.ckpt"), _weights(tmp_path / "two/last.ckpt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k
    # rank 0 alone wrote checkpoints: exactly the two files, no per-rank copies
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert abs(one["best_val_loss"] - two["best_val_loss"]) < 1e-3


def test_ddp_tbptt_resume_is_exact_with_each_rank_on_its_own_streams(corpus, tmp_path):
    """Rank 0 writes the checkpoint: the TBPTT carry in it must hold every rank's streams
    (rows in rank order), and each rank must resume from its own (K2 > K1: context tokens too)."""
    cfg = dict(TINY, hidden=16, layers=1, batch_size=4, bptt="tbptt", k1=8, k2=16, max_steps=8, val_every=4,
               strategy="ddp_spawn", devices=2)
    fit(cfg, corpus, tmp_path / "a")
    fit(cfg, corpus, tmp_path / "b", stop_at=4)
    carry = torch.load(tmp_path / "b/last.ckpt", weights_only=True)["tbptt_carry"]
    assert carry["ctx"].shape == (4, 8) and [tuple(s.shape) for s in carry["state"]] == [(1, 4, 16)] * 2  # all 4 streams
    fit(cfg, corpus, tmp_path / "c", resume=str(tmp_path / "b/last.ckpt"))
    a, c = _weights(tmp_path / "a/last.ckpt"), _weights(tmp_path / "c/last.ckpt")
    for k in a:
        assert torch.equal(a[k], c[k]), k
    # a carry of another batch size (or of one rank's streams only) is a clear error, not a shape mismatch deep down
    with pytest.raises(ValueError, match="carry holds 4 streams, this rank reads 2: resume with the batch_size"):
        fit(dict(cfg, strategy="auto", devices=1, batch_size=2), corpus, tmp_path / "d", resume=str(tmp_path / "b/last.ckpt"))


def test_checkpoint_loads_weights_only_and_samples(corpus, tmp_path):
    fit(dict(TINY, max_steps=40), corpus, tmp_path / "ck")
    model, vocab, hp = load_checkpoint(tmp_path / "ck/best.ckpt")
    assert isinstance(vocab, Vocab) and len(vocab) == hp["vocab_size"]
    s1 = generate(model, vocab, "ROMEO:", 80, temperature=0.8, seed=7)
    s2 = generate(model, vocab, "ROMEO:", 80, temperature=0.8, seed=7)
    assert s1 == s2 and s1[0].startswith("ROMEO:") and len(s1[0]) == 86
    batch = generate(model, vocab, "ROMEO:", 50, temperature=1.0, seed=1, n=4, top_k=5)
    assert len(batch) == 4 and len(set(batch)) > 1
    # one step per token with the carried state == one pass over the whole text (argmax)
    prime = vocab.encode("JULIET:\n")
    new = sample_ids(model, prime, 30, argmax=True)[0].tolist()
    logits, _ = model(torch.tensor([prime + new]))
    assert logits[0, len(prime) - 1 : -1].argmax(-1).tolist() == new
    with pytest.raises(ValueError, match="temperature must be >= 0.001"):
        generate(model, vocab, "ROMEO:", 10, temperature=0)
    with pytest.raises(ValueError, match="temperature must be >= 0.001"):  # 1/T would overflow float32 in the chunked sampler
        sample_ids(model, prime, 5, temperature=1e-39, chunk=4)
    greedy = generate(model, vocab, "JULIET:\n", 30, temperature=0, argmax=True)[0]  # argmax ignores T
    assert greedy == "JULIET:\n" + vocab.decode(new)
    assert sample_ids(model, prime, 30, temperature=0, argmax=True, chunk=4)[0].tolist() == new  # the GPU's chunked path too
    with pytest.raises(ValueError, match=r"missing from the vocabulary: '#', 'Z'"):
        generate(model, vocab, "Z#ROMEO", 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to make a GPU checkpoint (bench/gpu_check.sh covers it)")
def test_gpu_checkpoint_samples_on_cpu(corpus, tmp_path):
    fit(dict(TINY, max_steps=10, accelerator="gpu"), corpus, tmp_path / "g")
    model, vocab, _ = load_checkpoint(tmp_path / "g/best.ckpt", map_location="cpu")
    assert next(model.parameters()).device.type == "cpu"
    assert len(generate(model, vocab, "ROMEO:", 20, seed=0)[0]) == 26


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fast_sampling_step_equals_the_model(cell):
    from lightning_modules.sampling import FastStep

    torch.manual_seed(0)
    for inp in ("embedding", "onehot"):
        m = CharRNN(30, cell, hidden=24, layers=3, input=inp).eval()
        x = torch.randint(0, 30, (5, 12))
        ref, _ = m(x)
        step, state = FastStep(m), m.rnn.init_state(5)
        for t in range(12):
            logits, state = step(x[:, t], state)
            assert torch.allclose(logits, ref[:, t], atol=1e-5), (cell, inp, t)
        fast = sample_ids(m, [1, 2, 3], 40, argmax=True, n=2)
        slow = sample_ids(m, [1, 2, 3], 40, argmax=True, n=2, fast=False)
        assert torch.equal(fast, slow)


def test_draw_is_torch_multinomial():
    """`draw` takes the id torch.multinomial(p, 1) takes, from the same generator stream, so
    that dropping multinomial's per-call checks changed no sample the project has made."""
    from lightning_modules.sampling import draw

    torch.manual_seed(0)
    for rows, V in ((1, 65), (7, 300)):
        p = torch.softmax(3 * torch.randn(rows, V), -1)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        for _ in range(200):
            assert torch.equal(torch.multinomial(p, 1, generator=g1).squeeze(1), draw(p.clone(), g2))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_seeded_samples_are_the_same_on_both_paths(cell):
    """The CPU's FastStep path and the model's own forward draw the same ids for a seed,
    temperature, top-k and stream count alike (above 32 streams both take the forward)."""
    torch.manual_seed(0)
    m = CharRNN(30, cell, hidden=24, layers=2).eval()
    for kw in (dict(temperature=0.7), dict(top_k=4), dict(n=5, temperature=1.3)):
        fast = sample_ids(m, [1, 2, 3], 120, seed=11, **kw)
        assert torch.equal(fast, sample_ids(m, [1, 2, 3], 120, seed=11, fast=False, **kw)), kw
        assert fast.shape == (kw.get("n", 1), 120)
    assert sample_ids(m, [1], 0, seed=0).shape == (1, 0)


@pytest.mark.parametrize("path", [dict(), dict(fast=False), dict(chunk=8)])  # FastStep, the model's forward, the GPU's chunks
@pytest.mark.parametrize("argmax", [True, False])
def test_sampling_a_broken_model_is_an_error(path, argmax):
    """NaN weights give NaN scores, which would draw garbage ids without a word: an error
    instead, on every path (pipeline.sample turns it into one line); huge finite weights
    whose scores overflow float32 too."""
    m = CharRNN(20, "lstm", hidden=16, layers=1).eval()
    with torch.no_grad():
        m.rnn.rnn.weight_hh_l0[3, 2] = float("nan")
    with pytest.raises(ValueError, match="weights are not finite"):
        sample_ids(m, [1, 2], 30, seed=0, argmax=argmax, **path)
    m = CharRNN(20, "lstm", hidden=16, layers=1).eval()
    with torch.no_grad():  # every gate saturated, h -> 1: each score sums 16 terms of 3e38
        for name, w in m.rnn.rnn.named_parameters():
            w.fill_(20.0 if name.startswith("bias_ih") else 0.0)
        m.head.weight.fill_(3e38)
    with pytest.raises(ValueError, match="scores are not finite"):  # the chunks' last scores checked once, after the run
        sample_ids(m, [1, 2], 30, seed=0, argmax=argmax, **path)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_chunked_sampling_argmax_equals_the_model(cell):
    """The chunk body (what a GPU replays as a CUDA graph) runs eagerly on the CPU: with
    argmax it must pick the reference path's tokens, over chunk borders and lengths that
    are not a multiple of the chunk."""
    torch.manual_seed(1)
    m = CharRNN(30, cell, hidden=24, layers=3).eval()
    slow = sample_ids(m, [4, 5, 6], 45, argmax=True, n=3, fast=False)
    for chunk in (1, 8, 64):
        assert torch.equal(sample_ids(m, [4, 5, 6], 45, argmax=True, n=3, chunk=chunk), slow), chunk
    assert sample_ids(m, [4], 0, chunk=8).shape == (1, 0)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        sample_ids(m, [4], 5, chunk=0)


def test_chunked_sampling_draws_from_softmax_over_temperature():
    """Gumbel-max: argmax(z / T + g), g = -log(-log u), is a sample of softmax(z / T).
    Checked on the first token of 40,000 streams against the model's own distribution;
    with top_k, tokens outside the k largest never appear. Seeded: the same seed, the same ids."""
    torch.manual_seed(2)
    m = CharRNN(12, "lstm", hidden=16, layers=1).eval()
    with torch.no_grad():  # spread-out logits, so that temperature and noise shape matter
        m.head.weight.mul_(0.1)
        m.head.bias.copy_(torch.linspace(-2.5, 2.5, 12))
        prime, n = [3, 1], 40_000
        z = m(torch.tensor([prime]))[0][0, -1]
    for temp in (0.7, 1.5):
        ids = sample_ids(m, prime, 1, temperature=temp, n=n, chunk=4, seed=3)[:, 0]
        freq = torch.bincount(ids, minlength=12).double() / n
        p = torch.softmax(z.double() / temp, -1)
        assert (freq - p).abs().max() < 5 * (p * (1 - p) / n).sqrt().max() + 1e-3, (temp, freq, p)
    top = sample_ids(m, prime, 1, temperature=1.0, top_k=3, n=5000, chunk=4, seed=3)[:, 0]
    assert set(top.tolist()) <= set(z.topk(3).indices.tolist())
    a = sample_ids(m, prime, 20, n=2, chunk=8, seed=11)
    assert torch.equal(a, sample_ids(m, prime, 20, n=2, chunk=8, seed=11))
    assert not torch.equal(a, sample_ids(m, prime, 20, n=2, chunk=8, seed=12))


def test_a_chunk_sampler_is_reused_until_the_weights_change():
    """A model keeps its last chunk sampler (on a GPU: its captured graph). A later call with
    the same settings reuses it from its own prime and seed: the tokens a fresh sampler gives.
    Other settings, or weights changed in place, make a new one; the cache keeps no model alive;
    a call while the kept sampler is in use (another thread) gets one of its own."""
    import gc
    import threading
    import weakref

    from lightning_modules import sampling_graph

    torch.manual_seed(3)
    m = CharRNN(20, "lstm", hidden=16, layers=2).eval()
    sampling_graph.clear_cache()
    sample_ids(m, [1, 2], 30, n=2, chunk=8, seed=4)
    first = sampling_graph._CACHE[m][1]
    b = sample_ids(m, [5], 30, n=2, chunk=8, seed=9)  # another prime and seed: reused, started afresh
    assert sampling_graph._CACHE[m][1] is first
    sampling_graph.clear_cache()
    assert torch.equal(b, sample_ids(m, [5], 30, n=2, chunk=8, seed=9))
    assert sampling_graph._CACHE[m][1] is not first
    sample_ids(m, [5], 30, n=2, chunk=8, seed=9, temperature=0.5)
    assert sampling_graph._CACHE[m][0][2] == 0.5
    old = sample_ids(m, [1, 2], 30, n=2, chunk=8, argmax=True)
    with torch.no_grad():  # an optimizer step's kind of change: in place
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    new = sample_ids(m, [1, 2], 30, n=2, chunk=8, argmax=True)
    assert torch.equal(new, sample_ids(m, [1, 2], 30, n=2, argmax=True, fast=False)) and not torch.equal(new, old)
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None and len(sampling_graph._CACHE) == 0
    m = CharRNN(20, "lstm", hidden=16, layers=2).eval()
    want = {seed: sample_ids(m, [1, 2], 40, n=2, chunk=8, seed=seed) for seed in range(6)}
    kept = sampling_graph._CACHE[m]
    with kept[2]:  # held by another call: this one gets its own sampler and leaves the kept one
        assert torch.equal(sample_ids(m, [1, 2], 40, n=2, chunk=8, seed=3), want[3])
    assert sampling_graph._CACHE[m] is kept
    got = {}  # threads sampling the same model at once: each call's tokens its own
    threads = [threading.Thread(target=lambda sd: got.__setitem__(sd, [sample_ids(m, [1, 2], 40, n=2, chunk=8, seed=sd) for _ in range(5)]), args=(sd,))
               for sd in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(ids, want[sd]) for sd, runs in got.items() for ids in runs) and len(got) == 6
    with torch.inference_mode():  # weights without a version counter: sampled, never cached
        frozen = CharRNN(20, "lstm", hidden=16, layers=2).eval()
    assert torch.equal(sample_ids(frozen, [1, 2], 12, chunk=4, argmax=True), sample_ids(frozen, [1, 2], 12, argmax=True, fast=False))
    assert frozen not in sampling_graph._CACHE


def test_batches_moved_to_a_device_are_the_same_batches():
    """`.to(device)` keeps the split where the model is (a GPU: no host-device copy per step);
    the windows and streams stay exactly the ones the step index gives."""
    from lightning_modules.data import RandomWindows, Streams

    data = torch.arange(5000, dtype=torch.int64) % 97
    a, b = RandomWindows(data, 8, 16, 10, seed=3), RandomWindows(data, 8, 16, 10, seed=3).to("cpu")
    s, t = Streams(data, 4, 32, 10), Streams(data, 4, 32, 10).to("cpu")
    for step in (0, 7):
        for x, y in ((a.batch_at(step), b.batch_at(step)), (s.batch_at(step), t.batch_at(step))):
            assert all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v for u, v in zip(x, y))
    x, y, _ = b.batch_at(4)
    assert x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1]) and not torch.equal(x, a.batch_at(5)[0])


def test_unseeded_sampling_leaves_the_global_rng_alone():
    m = CharRNN(10, "lstm", hidden=8, layers=1).eval()
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    sample_ids(m, [1, 2], 5)
    sample_ids(m, [1, 2], 5, chunk=4)
    assert torch.equal(torch.rand(3), want)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true", "16-mixed"])
def test_gradient_clipping_clips_the_true_gradients(precision):
    """The module takes fused AdamW (CUDA and CPU), and Lightning's clip_gradients refuses a
    fused optimizer under mixed precision (bf16 too): here it runs on the CPU under bf16 and 32.
    Under 16-mixed (a GradScaler, a plain AdamW) the gradients the optimizer sees are the
    unscaled ones, clipped to the norm asked for, not 1/65536 of it."""
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lightning_modules.module import CharLM

    norms = []

    class Probe(CharLM):
        def configure_optimizers(self):
            opt = super().configure_optimizers()
            assert bool(opt.defaults["fused"]) == (precision != "16-mixed"), opt.defaults["fused"]
            return opt

        def on_before_optimizer_step(self, optimizer):
            if precision == "16-mixed":  # the clipping comes after the GradScaler's unscale_, not before
                from torch.amp.grad_scaler import OptState

                scaler = self.trainer.precision_plugin.scaler
                assert scaler._per_optimizer_states[id(optimizer)]["stage"] is OptState.UNSCALED
            super().on_before_optimizer_step(optimizer)  # the clipping
            g = torch.cat([p.grad.flatten() for p in self.parameters() if p.grad is not None])
            norms.append(g.float().norm().item())

    torch.manual_seed(0)
    V, clip = 20, 1e-3
    batches = [(torch.randint(0, V, (4, 16)), torch.randint(0, V, (4, 16)), True) for _ in range(3)]
    # oneDNN has no fp16 LSTM: under 16-mixed the equation cell runs
    m = Probe(vocab_size=V, hidden=16, layers=1, clip=clip, max_steps=3, fused=precision != "16-mixed")
    kw = dict(plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]) if precision == "16-mixed" else dict(precision=precision)
    t = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, **kw)
    t.fit(m, torch.utils.data.DataLoader(batches, batch_size=None))
    assert len(norms) == 3 and all(clip * 0.999 <= n <= clip * 1.001 for n in norms), norms


def test_io_dropout_drops_the_input_and_output_connections_only_in_training():
    torch.manual_seed(0)
    x = torch.randint(0, 30, (4, 12))
    plain, io = CharRNN(30, "lstm", hidden=16, layers=2), CharRNN(30, "lstm", hidden=16, layers=2, io_dropout=0.5)
    io.load_state_dict(plain.state_dict())  # dropout adds no weights
    assert not any(isinstance(m, torch.nn.Dropout) for m in (plain.in_drop, plain.out_drop))
    io.train()
    a, b = io(x)[0], io(x)[0]
    assert not torch.allclose(a, b)  # a new mask each call
    io.eval(), plain.eval()
    assert torch.equal(io(x)[0], plain(x)[0])  # evaluation and sampling: no dropout
    # the dropped units are the embedding's output: a zeroed input row reaches layer 1 as zeros
    io.train()
    seen = []
    h = io.rnn.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    io(x)
    h.remove()
    frac = (seen[0] == 0).float().mean().item()
    assert 0.35 < frac < 0.65
    with pytest.raises(ValueError, match="io_dropout must be in"):
        CharRNN(30, io_dropout=1.0)


@pytest.mark.parametrize("cell", ["lstm", "lstm-v"])
def test_zero_io_dropout_and_weight_drop_draw_no_random_numbers(cell):
    """Off, they leave the random stream alone: training stays what it was without them."""
    x = torch.randint(0, 30, (4, 12))
    for kw, draws in ((dict(), False), (dict(io_dropout=0.2), True), (dict(weight_drop=0.2), True)):
        m = CharRNN(30, cell, hidden=16, layers=2, **kw).train()
        before = torch.get_rng_state()
        m(x)
        assert torch.equal(before, torch.get_rng_state()) != draws, kw


def test_io_dropout_and_weight_drop_travel_in_the_checkpoint(corpus, tmp_path):
    fit(dict(TINY, max_steps=4, val_every=2, io_dropout=0.3, weight_drop=0.2), corpus, tmp_path / "c")
    m, _, hp = load_checkpoint(tmp_path / "c/best.ckpt")
    assert hp["io_dropout"] == 0.3 and m.in_drop.p == 0.3 and not m.training
    assert hp["weight_drop"] == 0.2 and m.rnn.weight_drop == 0.2


def test_an_empty_prime_starts_from_a_newline_at_every_level():
    from lightning_modules.sampling import start_id

    assert start_id(Vocab("byte", [9, 10, 32, 97])) == 1  # byte 10, not the tab at id 0
    assert start_id(Vocab("char", ["\t", "\n", "a"])) == 1
    assert start_id(Vocab("word", ["<unk>", " ", "\n", "the"], unk=0)) == 2
    assert start_id(Vocab("char", ["a", "b"])) == 0  # no newline: token 0
    torch.manual_seed(0)
    v = Vocab("byte", [9, 10, 32, 97])
    m = CharRNN(4, hidden=8).eval()
    after_newline = sample_ids(m, [1], 6, argmax=True)[0].tolist()
    assert generate(m, v, "", 6, argmax=True)[0] == v.decode(after_newline)


@pytest.mark.parametrize("cell", ["lstm-fgr", "lstm-v", "gru-lecture"])
def test_greedy_sampling_follows_the_models_own_argmax_for_equation_cells(cell):
    """Sampling runs one call per token: the carried state (FGR: its gates too) must make that
    the network a single pass over the whole text is."""
    torch.manual_seed(2)
    m = CharRNN(12, cell, hidden=16, layers=2)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.7, 0.7)  # strong recurrences, so a dropped state would show
    prime = [3, 1, 4, 1, 5]
    new = sample_ids(m, prime, 40, argmax=True)[0].tolist()
    logits, _ = m(torch.tensor([prime + new]))
    assert logits[0, len(prime) - 1 : -1].argmax(-1).tolist() == new
