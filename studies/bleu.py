"""Corpus BLEU (Papineni et al. 2002), the captioning metric of Show and Tell.

    BLEU-N = BP * exp( sum_{n=1..N} (1/N) log p_n )
    p_n    = sum over captions of n-grams matched (each clipped to its largest count in any
             one reference) / sum of the hypothesis's n-grams
    BP     = 1 if c > r else exp(1 - r / c)   c: hypothesis words, r: for each caption the
             reference length closest to its own (the shorter on a tie), summed

Whitespace-tokenised words; no smoothing (a corpus with no matching 4-gram scores 0).
"""
from __future__ import annotations

import math
from collections import Counter


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hyps: list[str], refs: list[list[str]], n: int = 4) -> float:
    """hyps[i]: a caption; refs[i]: its references. -> BLEU-n in [0, 1]."""
    if len(hyps) != len(refs) or not hyps:
        raise ValueError(f"need one list of references per hypothesis, got {len(hyps)} hypotheses and {len(refs)} reference lists")
    matched, total = [0] * n, [0] * n
    c = r = 0
    for hyp, rs in zip(hyps, refs):
        h, rws = hyp.split(), [x.split() for x in rs]
        if not rws:
            raise ValueError("every hypothesis needs at least one reference")
        c += len(h)
        r += min((abs(len(x) - len(h)), len(x)) for x in rws)[1]
        for k in range(1, n + 1):
            hg = _ngrams(h, k)
            best = Counter()
            for x in rws:
                best |= _ngrams(x, k)
            matched[k - 1] += sum(min(cnt, best[g]) for g, cnt in hg.items())
            total[k - 1] += max(0, len(h) - k + 1)
    if c == 0 or min(matched) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matched, total)) / n
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_p)
