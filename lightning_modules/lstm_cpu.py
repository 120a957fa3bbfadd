"""The equation LSTMs' gate arithmetic as one compiled C loop per time step (CPU), for `lstm_seq`.

Why: on the CPU the torch-op loop of `lstm_seq.lstm_forward` makes about a dozen element-wise
calls per time step (two dozen backward), each with its own dispatch, allocation checks and
pass over memory; at B32 H256 they cost more than the step's matmul. Here each step is one
matmul (torch) and ONE call into a small C function, compiled for this layout and this CPU,
that does all the gate arithmetic in a single vectorised pass (the time loop itself is
`lstm_steps`, shared with the Triton kernels of `lstm_triton`). The equations are exactly
those of `lstm_triton` and `lstm_seq`, per element (b, j) of step t (absent gates: 1; CIFG:
f = 1 - i; r, e: FGR's R [i, f, o]_{t-1} and R^T da_{t+1} terms):

    i = sigma(a_i [+ r_i] + p_i C_{t-1})   f = sigma(a_f [+ r_f] + p_f C_{t-1})   C~ = g(a_C)
    C_t = f C_{t-1} + i C~                 o = sigma(a_o [+ r_o] + p_o C_t)       h_t = o h(C_t)

    da_o = (dh h(C_t) [+ e_o]) o (1 - o)     dC += dh o h'(C_t) + p_o da_o
    da_i = (dC C~ [+ e_i]) i (1 - i)         (CIFG: dC (C~ - C_{t-1}))
    da_f = (dC C_{t-1} [+ e_f]) f (1 - f)    da_C = dC i g'(a_C)
    dC_{t-1} = dC f + p_i da_i + p_f da_f    (CIFG: dC (1 - i) + ...)

sigma(x) = 1 / (1 + exp(-x)) with x clipped to [-80, 80] (no overflow), tanh(x) = 2 sigma(2x) - 1.
The C compiler (`CC`, else gcc or cc) builds one shared library per layout into a cache
folder (LSTM_CPU_CACHE, else ~/.cache/rnn-lecture/lstm_cpu), written atomically and keyed by
the source, the flags and the CPU. float32 only; without a compiler, or with
LSTM_CPU_KERNEL=0, the torch-op loop runs instead (same results to float rounding).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from lightning_modules import lstm_steps

SOURCE = r"""
#include <math.h>
#include <stddef.h>
/* glibc's vector expf (libmvec), declared without -ffast-math so that the loops vectorise */
#if defined(__x86_64__) && defined(__GLIBC__)
__attribute__((simd("notinbranch"))) float expf(float);
#endif

static inline float sigm(float x) {
    x = x < -80.0f ? -80.0f : (x > 80.0f ? 80.0f : x);
    return 1.0f / (1.0f + expf(-x));
}
static inline float tanh_(float x) { return 2.0f * sigm(2.0f * x) - 1.0f; }

#define GH (G * H)
#define ROW(P, b, width) ((P) + ((b) * T + t) * (width))
#define AT(P, k) ((P) + ((k) >= 0 ? (k) : 0) * H)  /* column block k of a row (absent: block 0, unused) */
#define RW __attribute__((noinline)) static void  /* one batch row; restrict parameters let it vectorise */

RW fwd_row(long H, float *restrict ai, float *restrict af, float *restrict ag, float *restrict ao,
           const float *restrict cp, float *restrict cn, float *restrict y, float *restrict hcr,
           const float *restrict ri, const float *restrict rf, const float *restrict ro,
           float *restrict si, float *restrict sf, float *restrict so,
           const float *restrict pi, const float *restrict pf, const float *restrict po) {
    for (long j = 0; j < H; j++) {
        float c_prev = cp[j], i = 1.0f, f = 1.0f, o = 1.0f, x;
        if (KI >= 0) {
            x = ai[j];
            if (FGR) x += ri[j];
            if (PEEP) x += pi[j] * c_prev;
            i = sigm(x); ai[j] = i;
        }
        if (KF >= 0) {
            x = af[j];
            if (FGR) x += rf[j];
            if (PEEP) x += pf[j] * c_prev;
            f = sigm(x); af[j] = f;
        }
        float g = ag[j];
        if (INPUT_ACT) { g = tanh_(g); ag[j] = g; }
        float c = COUPLED ? c_prev + i * (g - c_prev) : f * c_prev + i * g;
        cn[j] = c;
        if (KO >= 0) {
            x = ao[j];
            if (FGR) x += ro[j];
            if (PEEP) x += po[j] * c;
            o = sigm(x); ao[j] = o;
        }
        float hc = c;
        if (OUTPUT_ACT) { hc = tanh_(c); hcr[j] = hc; }
        y[j] = o * hc;
        if (FGR && RI >= 0) si[j] = i;
        if (FGR && RF >= 0) sf[j] = f;
        if (FGR && RO >= 0) so[j] = o;
    }
}

/* A (B, T, G*H) pre-activations in, activations out; C (B, T+1, H); Y, HC (B, T, H);
   SG (B, T, K*H) the sigmoid gates (FGR); Rb (B, K*H) = R [i, f, o]_{t-1}; PI, PF, PO (H).
   Absent buffers may be NULL: they are never read or written. */
void fwd_step(float *A, float *C, float *Y, float *HC, float *SG, const float *Rb,
              const float *PI, const float *PF, const float *PO, long t, long T, long H, long B) {
    for (long b = 0; b < B; b++) {
        float *a = ROW(A, b, GH), *y = ROW(Y, b, H);
        float *hcr = OUTPUT_ACT ? ROW(HC, b, H) : y;
        const float *r = FGR ? Rb + b * K * H : a;
        float *sg = FGR ? ROW(SG, b, K * H) : y;
        fwd_row(H, AT(a, KI), AT(a, KF), AT(a, KG), AT(a, KO), C + (b * (T + 1) + t) * H,
                C + (b * (T + 1) + t + 1) * H, y, hcr, FGR ? AT(r, RI) : r, FGR ? AT(r, RF) : r,
                FGR ? AT(r, RO) : r, FGR ? AT(sg, RI) : sg, FGR ? AT(sg, RF) : sg, FGR ? AT(sg, RO) : sg,
                PI ? PI : a, PF ? PF : a, PO ? PO : a);
    }
}

RW bwd_row(long H, const float *restrict ai, const float *restrict af, const float *restrict ag,
           const float *restrict ao, float *restrict di, float *restrict df, float *restrict dg,
           float *restrict dO, const float *restrict cp, const float *restrict hcr,
           const float *restrict dhr, float *restrict dcr, const float *restrict ei, const float *restrict ef,
           const float *restrict eo, float *restrict si, float *restrict sf, float *restrict so,
           const float *restrict pi, const float *restrict pf, const float *restrict po) {
    for (long j = 0; j < H; j++) {
        float dh = dhr[j], dc = dcr[j], c_prev = cp[j], hc = hcr[j], dhc = dh, x, da;
        float i = KI >= 0 ? ai[j] : 1.0f, f = KF >= 0 ? af[j] : 1.0f, g = ag[j];
        if (KO >= 0) {
            float o = ao[j];
            x = dh * hc;
            if (FGR) x += eo[j];
            da = x * o * (1.0f - o);
            dO[j] = da;
            if (FGR) so[j] = da;
            dhc = dh * o;
            if (PEEP) dc += da * po[j];
        }
        dc += OUTPUT_ACT ? dhc * (1.0f - hc * hc) : dhc;
        float dc_prev = COUPLED ? dc * (1.0f - i) : dc * f;
        if (KI >= 0) {
            x = COUPLED ? dc * (g - c_prev) : dc * g;
            if (FGR) x += ei[j];
            da = x * i * (1.0f - i);
            di[j] = da;
            if (FGR) si[j] = da;
            if (PEEP) dc_prev += da * pi[j];
        }
        if (KF >= 0) {
            x = dc * c_prev;
            if (FGR) x += ef[j];
            da = x * f * (1.0f - f);
            df[j] = da;
            if (FGR) sf[j] = da;
            if (PEEP) dc_prev += da * pf[j];
        }
        dg[j] = INPUT_ACT ? dc * i * (1.0f - g * g) : dc * i;
        dcr[j] = dc_prev;
    }
}

/* dA (B, T, G*H) gets da_t; dSG (B, T, K*H) its sigmoid-gate columns (FGR); DH (B, H) dh_t in;
   DC (B, H) dC_t in, dC_{t-1} out; EX (B, K*H) = R^T da_{t+1} (FGR). Absent buffers: NULL. */
void bwd_step(const float *A, const float *C, const float *HC, float *DA, float *DSG, const float *DH,
              float *DC, const float *EX, const float *PI, const float *PF, const float *PO,
              long t, long T, long H, long B) {
    for (long b = 0; b < B; b++) {
        const float *a = ROW(A, b, GH), *cn = C + (b * (T + 1) + t + 1) * H;
        float *d = ROW(DA, b, GH);
        const float *e = FGR ? EX + b * K * H : a;
        float *sg = FGR ? ROW(DSG, b, K * H) : d;
        bwd_row(H, AT(a, KI), AT(a, KF), AT(a, KG), AT(a, KO), AT(d, KI), AT(d, KF), AT(d, KG), AT(d, KO),
                C + (b * (T + 1) + t) * H, OUTPUT_ACT ? ROW(HC, b, H) : cn, DH + b * H, DC + b * H,
                FGR ? AT(e, RI) : e, FGR ? AT(e, RF) : e, FGR ? AT(e, RO) : e,
                FGR ? AT(sg, RI) : sg, FGR ? AT(sg, RF) : sg, FGR ? AT(sg, RO) : sg,
                PI ? PI : a, PF ? PF : a, PO ? PO : a);
    }
}
"""

_P = ctypes.c_void_p
_L = ctypes.c_long
_lock = threading.Lock()
_libs: dict[tuple, ctypes.CDLL | None] = {}
_warned = False


def _defines(lay) -> dict:
    """The layout's constants (`lstm_steps.gate_constants`) as C integers, plus the widths G, K."""
    consts = {k: int(v) for k, v in lstm_steps.gate_constants(lay).items()}
    return dict(consts, G=len(lay.gate_names), K=len(lay.sig_names))


def compiler() -> list[str] | None:
    """The C compiler's command line: CC split like a shell would ("ccache gcc" works), else gcc or cc."""
    if os.environ.get("CC", "").strip():
        return shlex.split(os.environ["CC"])
    found = shutil.which("gcc") or shutil.which("cc")
    return [found] if found else None


def cache_dir() -> Path:
    if os.environ.get("LSTM_CPU_CACHE"):
        return Path(os.environ["LSTM_CPU_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnn-lecture" / "lstm_cpu"


def _cpu_id() -> str:
    """The CPU's feature flags (the library is built with -march=native for this CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.machine() + platform.processor()


def build(defs: dict) -> Path:
    """Compile the C source for one layout (cached); raises RuntimeError with the compiler's
    message when it cannot."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set CC, or install gcc)")
    if shutil.which(cc[0]) is None:
        raise RuntimeError(f"the C compiler {cc[0]!r} was not found (set CC to one that exists)")
    flags = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
    flags += [f"-D{k}={v}" for k, v in sorted(defs.items())]
    key = hashlib.sha256("\0".join([SOURCE, *cc, *flags, _cpu_id()]).encode()).hexdigest()[:20]
    out = cache_dir() / f"lstm_step_{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "lstm_step.c"
        src.write_text(SOURCE)
        so = Path(tmp) / out.name
        err = ""
        for arch in (["-march=native"], []):  # some compilers lack -march=native
            res = subprocess.run([*cc, *flags, *arch, str(src), "-o", str(so), "-lm"], capture_output=True,
                                 text=True, errors="replace", timeout=300)
            if res.returncode == 0:
                os.replace(so, out)  # atomic: a reader sees the whole library or none
                return out
            err = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"{' '.join(cc)} could not build the LSTM step kernel: {err}")


def library(lay) -> ctypes.CDLL | None:
    """The compiled kernels for this layout, or None (no compiler: the torch-op loop is used,
    with one warning per process)."""
    global _warned
    defs = _defines(lay)
    key = tuple(sorted(defs.items()))
    with _lock:
        if key not in _libs:
            try:
                lib = ctypes.CDLL(str(build(defs)))
                lib.fwd_step.argtypes = [_P] * 9 + [_L] * 4
                lib.bwd_step.argtypes = [_P] * 11 + [_L] * 4
                lib.fwd_step.restype = lib.bwd_step.restype = None
                _libs[key] = lib
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                _libs[key] = None
                if not _warned:
                    _warned = True
                    warnings.warn(f"LSTM CPU kernel unavailable, using torch ops instead: {e}", stacklevel=2)
        return _libs[key]


def enabled() -> bool:
    return os.environ.get("LSTM_CPU_KERNEL", "1") != "0"


def usable(x: Tensor, lay) -> bool:
    """Take the C path for this tensor and layout? float32 on the CPU, unless LSTM_CPU_KERNEL=0
    or the kernel cannot be built; never while torch.export or torch.compile traces (the C
    call reads raw pointers, which a traced fake tensor has not; the torch ops compute the
    same function, so the traced graph takes them)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and enabled() and not torch.compiler.is_compiling()
            and library(lay) is not None)


def _ptr(x: Tensor | None) -> int | None:
    if x is None:
        return None
    if not (x.is_contiguous() and x.dtype == torch.float32):
        raise ValueError(f"the LSTM C kernel needs contiguous float32 buffers, got {x.dtype} {tuple(x.stride())}")
    return x.data_ptr()


def _peeps(z) -> list:
    """Pointers to p_i, p_f, p_o; a peephole not given reads zeros (as the torch ops skip it)."""
    z.zero_peep = z.A.new_zeros(z.H)  # kept alive on z for the launcher's lifetime
    return [_ptr(z.peep.get(n, z.zero_peep)) for n in ("i", "f", "o")]


def lstm_forward(lay, xw: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, peep: dict, w_gg: Tensor | None, s0: Tensor | None = None):
    """`lstm_seq.lstm_forward` with the gate arithmetic in one C call per step; same returns."""
    return lstm_steps.forward(lay, xw, w_hh, h0, c0, peep, w_gg, _fwd_launcher, s0)


def _fwd_launcher(z):
    fn = library(z.lay).fwd_step
    args = [_ptr(b) for b in (z.A, z.C, z.Y, z.HC, z.SG, z.Rb)] + _peeps(z)
    T, H, B = z.T, z.H, z.B
    return lambda t: fn(*args, t, T, H, B)


def lstm_backward(lay, saved: tuple, peep: dict, w_hh: Tensor, w_gg: Tensor | None, h0: Tensor,
                  dY: Tensor, dhT: Tensor | None, dcT: Tensor | None, s0: Tensor | None = None, dsT: Tensor | None = None):
    """`lstm_seq.lstm_backward` with the gate arithmetic in one C call per step; same returns."""
    return lstm_steps.backward(lay, saved, peep, w_hh, w_gg, h0, dY, dhT, dcT, _bwd_launcher, s0, dsT)


def _bwd_launcher(z):
    fn = library(z.lay).bwd_step
    args = [_ptr(b) for b in (z.A, z.C, z.HC, z.dA, z.dSG, z.dh, z.dc, z.EX)] + _peeps(z)
    T, H, B = z.T, z.H, z.B
    return lambda t: fn(*args, t, T, H, B)
