"""Image captioning (slide 19): a CNN encoder feeding an LSTM decoder, after Vinyals et al.,
"Show and Tell" (2015).

    x_{-1} = CNN(I)                      the image, as the decoder's first input   (B, E)
    x_t    = W_e S_t,  t = 0 .. N-1      S_0 = <start>, then the caption's words    (B, N, E)
    h_t    = LSTM(x_t, h_{t-1})          any cell of cells.py (RecurrentStack)      (B, N, H)
    p_{t+1} = softmax(W_o h_t + b_o)     a probability for each word of the vocabulary
    loss   = - sum_t log p_t(S_t)        up to and including <end>, padding left out

The CNN: three blocks of 3x3 convolution, batch normalisation, ReLU and 2x2 max-pooling,
then the feature map flattened (positions kept: the captions say "left of", "above"), a
linear map to E and layer normalisation. Without the two normalisations the image vector
grew to tens of units within 50 steps, saturated the LSTM's gates at t = -1 and the
encoder's gradient fell to zero: the captioner learned no more than the blind baseline.
`feed="every"` gives the image to every step instead (Mao et al.'s m-RNN, Donahue et
al.'s LRCN): x_t = [W_e S_t ; CNN(I)], no step t = -1, so the decoder need not carry the
image in its state to the last word. Decoding feeds the most likely words back in, keeping
the `beam` best partial captions (beam 1: greedy). `use_image=False` gives the blind baseline: the same decoder with a
learned vector in place of CNN(I), a language model of captions that cannot see.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.recurrent import RecurrentStack

PAD, START, END = 0, 1, 2
SPECIALS = ("<pad>", "<start>", "<end>")


class ImageEncoder(nn.Module):
    """(B, 3, S, S) uint8 or float in [0, 1] -> (B, E)."""

    def __init__(self, embed: int, image_size: int, channels: tuple[int, ...] = (32, 64, 64)):
        super().__init__()
        blocks, c_in, side = [], 3, image_size
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, side = c, side // 2
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for {len(channels)} pooling blocks")
        self.features = nn.Sequential(*blocks)
        self.project = nn.Sequential(nn.Linear(c_in * side * side, embed), nn.LayerNorm(embed))

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images
        return self.project(self.features(x - 0.5).flatten(1))


class Captioner(nn.Module):
    def __init__(self, vocab_size: int, image_size: int, embed: int = 64, hidden: int = 128, layers: int = 1,
                 cell: str = "lstm", dropout: float = 0.0, use_image: bool = True, feed: str = "first"):
        super().__init__()
        if feed not in ("first", "every"):
            raise ValueError(f"feed must be 'first' (x_-1 = CNN(I)) or 'every' (CNN(I) beside every word), got {feed!r}")
        self.vocab_size, self.use_image, self.feed = vocab_size, use_image, feed
        self.encoder = ImageEncoder(embed, image_size) if use_image else None
        self.blind = None if use_image else nn.Parameter(torch.zeros(embed))
        self.embed = nn.Embedding(vocab_size, embed)
        self.rnn = RecurrentStack(cell, embed * (2 if feed == "every" else 1), hidden, layers, dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def image_input(self, images: Tensor) -> Tensor:
        """x_{-1}: CNN(I), or the blind model's learned vector."""
        if self.use_image:
            return self.encoder(images)
        return self.blind.expand(images.shape[0], -1)

    def forward(self, images: Tensor, words: Tensor) -> Tensor:
        """images (B, 3, S, S), words (B, N) = <start> w_1 .. -> logits (B, N, V) for w_1 .. <end>."""
        v, e = self.image_input(images), self.embed(words)
        if self.feed == "every":
            y, _ = self.rnn(torch.cat([e, v[:, None].expand(-1, e.shape[1], -1)], 2))
            return self.head(y)
        y, _ = self.rnn(torch.cat([v[:, None], e], 1))
        return self.head(y[:, 1:])

    def _step_input(self, words: Tensor, v: Tensor) -> Tensor:
        """(B, 1) word ids -> the decoder's input for one step."""
        e = self.embed(words)
        return torch.cat([e, v[:, None]], 2) if self.feed == "every" else e

    def loss(self, images: Tensor, ids: Tensor) -> Tensor:
        """Mean cross-entropy in nats per word of ids (B, N+1) = <start> w_1 .. <end> <pad>..."""
        logits = self(images, ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, self.vocab_size), ids[:, 1:].reshape(-1), ignore_index=PAD)

    @torch.no_grad()
    def caption(self, images: Tensor, beam: int = 1, max_len: int = 16) -> tuple[list[list[int]], Tensor]:
        """The most likely captions -> (word ids without <start>/<end>, their log-probabilities).

        beam 1: greedy, the most likely word fed back until <end> or `max_len` words.
        beam K > 1: the K most likely unfinished captions live on. A caption that takes <end>
        is set aside as its image's best finished one when it beats the one found so far,
        and the search stops once no live caption scores above it (log-probabilities only
        fall). A caption cut off at `max_len` words (its score without <end>) is returned
        only where no caption finished. <pad> and <start> are never generated.
        """
        if beam < 1:
            raise ValueError(f"beam must be at least 1, got {beam}")
        B, K, V = images.shape[0], beam, self.vocab_size
        v = self.image_input(images)
        if self.feed == "every":
            state = self.rnn.init_state(B, images.device, v.dtype)
        else:
            _, state = self.rnn(v[:, None])
        state = tuple(s.repeat_interleave(K, 1) for s in state)          # (L, B*K, H)
        v = v.repeat_interleave(K, 0)                                     # (B*K, E)
        tokens = torch.full((B * K, 1), START, dtype=torch.long, device=images.device)
        scores = torch.full((B, K), float("-inf"), device=images.device)
        scores[:, 0] = 0.0                                                # one live caption at first
        fin_score = torch.full((B,), float("-inf"), device=images.device)
        fin_tokens: list[list[int]] = [[] for _ in range(B)]
        rows = torch.arange(B, device=images.device)
        done = torch.zeros(B, dtype=torch.bool, device=images.device)     # greedy: <end> taken
        for _ in range(max_len):
            y, new = self.rnn(self._step_input(tokens[:, -1:], v), state)
            logp = F.log_softmax(self.head(y[:, -1]).float(), -1)
            logp[:, PAD] = logp[:, START] = float("-inf")
            cand = (scores.reshape(-1, 1) + logp).reshape(B, K, V)
            if K == 1:
                word = cand[:, 0].argmax(-1)
                ends = ~done & (word == END)
                for b in ends.nonzero()[:, 0].tolist():
                    fin_tokens[b] = tokens[b, 1:].tolist()
                fin_score = torch.where(ends, cand[rows, 0, END], fin_score)
                done |= ends
                scores = cand[rows, 0, word][:, None]
                tokens = torch.cat([tokens, word[:, None]], 1)
                state = new
                if bool(done.all()):
                    break
                continue
            end_score, end_k = cand[:, :, END].max(-1)                   # the best caption ending here
            better = end_score > fin_score
            for b in better.nonzero()[:, 0].tolist():
                fin_tokens[b] = tokens[b * K + int(end_k[b]), 1:].tolist()
            fin_score = torch.where(better, end_score, fin_score)
            cand[:, :, END] = float("-inf")
            top, idx = cand.reshape(B, K * V).topk(K, -1)
            src = (rows[:, None] * K + idx // V).reshape(-1)
            tokens = torch.cat([tokens[src], (idx % V).reshape(-1, 1)], 1)
            state = tuple(s[:, src] for s in new)
            scores = top
            if bool((scores.max(-1).values <= fin_score).all()):
                break
        best = scores.argmax(-1)
        found = fin_score > float("-inf")
        out = [fin_tokens[b] if found[b] else tokens[b * K + int(best[b]), 1:].tolist() for b in range(B)]
        return out, torch.where(found, fin_score, scores[rows, best])
