"""Why is a CNN SGD step slower inside ``lax.scan`` than from a Python loop?

Self-contained (pure JAX, no fnn).  Model: NHWC 28x28x1 -> Conv3x3x16 SAME + relu
-> 2x2 max-pool -> Conv3x3x32 SAME + relu -> 2x2 max-pool -> flatten -> Dense 10,
softmax cross-entropy, batch 128, plain SGD.

Usage::

    python benchmarks/conv_scan.py                 # every variant, each in a fresh subprocess
    python benchmarks/conv_scan.py --variant scan  # one variant in this process
    python benchmarks/conv_scan.py --hlo           # conv/custom-call/copy/transpose/... lines of loop vs scan HLO
    python benchmarks/conv_scan.py --hlo --variant scan_poolreshape

Each variant reports ms per SGD step: median over ``--reps`` repetitions (after a
warm-up call) of one 20-step "epoch", divided by 20.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

BATCH = 128
STEPS = 20
LR = 0.01

# name -> (driver, options, extra XLA_FLAGS)
#   driver: "loop" (Python loop of jitted steps), "scan" (lax.scan over pre-batched xs),
#           "scan_ds" (lax.scan over indices, batch by dynamic_slice), "fori" (fori_loop + dynamic_slice)
VARIANTS: dict[str, tuple[str, dict, str]] = {
    "loop": ("loop", {}, ""),
    "scan": ("scan", {}, ""),
    "scan_ds": ("scan_ds", {}, ""),
    "fori": ("fori", {}, ""),
    "scan_unroll2": ("scan", {"unroll": 2}, ""),
    "scan_unroll_full": ("scan", {"unroll": True}, ""),
    "scan_no_thunks": ("scan", {}, "--xla_cpu_use_thunk_runtime=false"),
    "scan_fast_math": ("scan", {}, "--xla_cpu_enable_fast_math=true"),
    "scan_dimnums_f32": ("scan", {"conv": "explicit"}, ""),
    "loop_conv_vjp": ("loop", {"conv": "vjp"}, ""),
    "scan_conv_vjp": ("scan", {"conv": "vjp"}, ""),
    "loop_im2col": ("loop", {"conv": "im2col"}, ""),
    "scan_im2col": ("scan", {"conv": "im2col"}, ""),
    "loop_conv_vjp_t": ("loop", {"conv": "vjp_t"}, ""),
    "scan_conv_vjp_t": ("scan", {"conv": "vjp_t"}, ""),
    "loop_conv_vjp_im2col": ("loop", {"conv": "vjp_im2col"}, ""),
    "scan_conv_vjp_im2col": ("scan", {"conv": "vjp_im2col"}, ""),
    "loop_poolreshape": ("loop", {"pool": "reshape"}, ""),
    "scan_poolreshape": ("scan", {"pool": "reshape"}, ""),
}

HLO_PATTERN = re.compile(
    r"\b(convolution|custom-call|copy|transpose|select-and-scatter|reduce-window|while|dot)\("
)


# --------------------------------------------------------------------------- model
def build(opts: dict):
    import jax
    import jax.numpy as jnp
    from jax import lax

    conv_kind = opts.get("conv", "lax")
    pool_kind = opts.get("pool", "reduce_window")
    dn = ("NHWC", "HWIO", "NHWC")

    def conv_lax(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    def conv_explicit(x, w):
        dnums = lax.conv_dimension_numbers(x.shape, w.shape, dn)
        return lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dnums,
            preferred_element_type=jnp.float32,
        )

    # conv with a hand-written backward: both gradients are *forward* convolutions
    @jax.custom_vjp
    def conv_vjp(x, w):
        return conv_lax(x, w)

    def conv_vjp_fwd(x, w):
        return conv_lax(x, w), (x, w)

    def conv_vjp_bwd(res, dy):
        x, w = res
        # dx: correlate dy with the spatially flipped kernel, in/out swapped (SAME, stride 1)
        w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
        dx = lax.conv_general_dilated(dy, w_t, (1, 1), "SAME", dimension_numbers=dn)
        # dW[kh,kw,i,o] = sum_{n,h,w} xpad[n,h+kh,w+kw,i] dy[n,h,w,o]:
        # a forward conv with batch<->feature swapped (x as C-batch/N-feature, dy as kernel)
        dw = lax.conv_general_dilated(
            x, dy, (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("CHWN", "IHWO", "HWNC"),
        )
        return dx, dw

    conv_vjp.defvjp(conv_vjp_fwd, conv_vjp_bwd)

    def _dx(w, dy):
        w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
        return lax.conv_general_dilated(dy, w_t, (1, 1), "SAME", dimension_numbers=dn)

    # dW as a canonical NHWC/HWIO forward conv on explicitly transposed operands
    @jax.custom_vjp
    def conv_vjp_t(x, w):
        return conv_lax(x, w)

    def conv_vjp_t_bwd(res, dy):
        x, w = res
        xt = jnp.transpose(x, (3, 1, 2, 0))  # C,H,W,N  ("batch"=C, "feature"=N)
        dyt = jnp.transpose(dy, (1, 2, 0, 3))  # H,W,N,O  (HWIO kernel)
        dwt = lax.conv_general_dilated(xt, dyt, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
        return _dx(w, dy), jnp.transpose(dwt, (1, 2, 0, 3))  # C,kh,kw,O -> kh,kw,C,O

    conv_vjp_t.defvjp(conv_vjp_fwd, conv_vjp_t_bwd)

    # dW as im2col patches^T @ dy (one dot), dx as the flipped-kernel conv
    @jax.custom_vjp
    def conv_vjp_im2col(x, w):
        return conv_lax(x, w)

    def conv_vjp_im2col_bwd(res, dy):
        x, w = res
        n, h, wd, c = x.shape
        kh, kw, _, o = w.shape
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.stack(
            [xp[:, i:i + h, j:j + wd, :] for i in range(kh) for j in range(kw)], axis=3
        ).reshape(n * h * wd, kh * kw * c)
        dw = (patches.T @ dy.reshape(n * h * wd, o)).reshape(kh, kw, c, o)
        return _dx(w, dy), dw

    conv_vjp_im2col.defvjp(conv_vjp_fwd, conv_vjp_im2col_bwd)

    def conv_im2col(x, w):
        n, h, wd, c = x.shape
        kh, kw, _, o = w.shape
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.stack(
            [xp[:, i:i + h, j:j + wd, :] for i in range(kh) for j in range(kw)], axis=3
        )  # n,h,w,9,c
        return (patches.reshape(n * h * wd, kh * kw * c) @ w.reshape(kh * kw * c, o)).reshape(
            n, h, wd, o
        )

    conv = {
        "lax": conv_lax, "explicit": conv_explicit, "vjp": conv_vjp, "im2col": conv_im2col,
        "vjp_t": conv_vjp_t, "vjp_im2col": conv_vjp_im2col,
    }[conv_kind]

    def pool(x):
        if pool_kind == "reshape":
            n, h, w, c = x.shape
            return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def loss(params, x, y):
        w1, b1, w2, b2, w3, b3 = params
        h = jax.nn.relu(conv(x, w1) + b1)
        h = pool(h)
        h = jax.nn.relu(conv(h, w2) + b2)
        h = pool(h)
        logits = h.reshape(h.shape[0], -1) @ w3 + b3
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def step(params, x, y):
        g = jax.grad(loss)(params, x, y)
        return jax.tree_util.tree_map(lambda p, gi: p - LR * gi, params, g)

    return loss, step


def init(seed=0):
    import jax
    import jax.numpy as jnp

    ks = jax.random.split(jax.random.PRNGKey(seed), 8)
    params = (
        jax.random.normal(ks[0], (3, 3, 1, 16)) * 0.3,
        jnp.zeros(16),
        jax.random.normal(ks[1], (3, 3, 16, 32)) * 0.1,
        jnp.zeros(32),
        jax.random.normal(ks[2], (7 * 7 * 32, 10)) * 0.02,
        jnp.zeros(10),
    )
    xs = jax.random.normal(ks[3], (STEPS, BATCH, 28, 28, 1))
    ys = jax.random.randint(ks[4], (STEPS, BATCH), 0, 10)
    return params, xs, ys


def make_runner(driver: str, opts: dict):
    """Returns (run(params, xs, ys) -> params, fn_to_lower, lower_args_builder)."""
    import jax
    from jax import lax

    _, step = build(opts)
    unroll = opts.get("unroll", 1)

    if driver == "loop":
        jstep = jax.jit(step)

        def run(params, xs, ys):
            for i in range(STEPS):
                params = jstep(params, xs[i], ys[i])
            return params

        return run, jstep, lambda p, xs, ys: (p, xs[0], ys[0])

    if driver == "scan":
        def epoch(params, xs, ys):
            def body(p, xy):
                return step(p, *xy), None
            return lax.scan(body, params, (xs, ys), unroll=unroll)[0]
    elif driver == "scan_ds":
        def epoch(params, xs, ys):
            def body(p, i):
                x = lax.dynamic_index_in_dim(xs, i, keepdims=False)
                y = lax.dynamic_index_in_dim(ys, i, keepdims=False)
                return step(p, x, y), None
            import jax.numpy as jnp
            return lax.scan(body, params, jnp.arange(STEPS), unroll=unroll)[0]
    elif driver == "fori":
        def epoch(params, xs, ys):
            def body(i, p):
                x = lax.dynamic_index_in_dim(xs, i, keepdims=False)
                y = lax.dynamic_index_in_dim(ys, i, keepdims=False)
                return step(p, x, y)
            return lax.fori_loop(0, STEPS, body, params)
    else:
        raise ValueError(driver)
    jepoch = jax.jit(epoch)
    return jepoch, jepoch, lambda p, xs, ys: (p, xs, ys)


def measure(name: str, reps: int) -> dict:
    import jax
    import numpy as np

    driver, opts, _ = VARIANTS[name]
    run, _, _ = make_runner(driver, opts)
    params, xs, ys = init()
    xs, ys = jax.device_put(xs), jax.device_put(ys)
    out = run(params, xs, ys)  # compile + warm-up
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = run(params, xs, ys)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / STEPS * 1e3)
    # correctness: same params as the reference Python loop of the plain model
    ref_run, _, _ = make_runner("loop", {})
    ref = ref_run(params, xs, ys)
    err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(out, ref, strict=True))
    return {
        "variant": name,
        "ms_step_median": statistics.median(times),
        "ms_step_min": min(times),
        "max_abs_diff_vs_loop": err,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def hlo_lines(name: str) -> tuple[str, list[str]]:
    driver, opts, _ = VARIANTS[name]
    _, fn, argb = make_runner(driver, opts)
    params, xs, ys = init()
    text = fn.lower(*argb(params, xs, ys)).compile().as_text()
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if HLO_PATTERN.search(s) and "=" in s:
            s = re.sub(r",? metadata=\{[^}]*\}", "", s)
            s = re.sub(r",? backend_config=\{.*\}$", "", s)
            keep.append(s[:260])
        elif s.startswith(("ENTRY", "%while_body", "%body", "%region", "%wide")) or (
            s.endswith("{") and "computation" not in s and s.startswith("%")
        ):
            keep.append("-- computation " + s.split(" ")[0])
    return text, keep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--hlo", action="store_true", help="dump HLO instruction lists instead")
    ap.add_argument("--hlo-dir", default="", help="also write full optimized HLO text here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.hlo:
        names = [args.variant] if args.variant else ["loop", "scan"]
        for n in names:
            text, keep = hlo_lines(n)
            if args.hlo_dir:
                os.makedirs(args.hlo_dir, exist_ok=True)
                with open(os.path.join(args.hlo_dir, f"{n}.hlo.txt"), "w") as f:
                    f.write(text)
            counts: dict[str, int] = {}
            for k in keep:
                m = HLO_PATTERN.search(k)
                if m:
                    counts[m.group(1)] = counts.get(m.group(1), 0) + 1
            print(f"===== {n}: {counts}")
            print("\n".join(keep))
        return

    if args.variant:
        r = measure(args.variant, args.reps)
        print(json.dumps(r) if args.json else r)
        return

    rows = []
    for name, (_, _, flags) in VARIANTS.items():
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
        p = subprocess.run(
            [sys.executable, __file__, "--variant", name, "--reps", str(args.reps), "--json"],
            env=env, capture_output=True, text=True,
        )
        if p.returncode != 0:
            print(f"{name:24s} FAILED: {p.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"{name:24s} {r['ms_step_median']:8.2f} ms/step (min {r['ms_step_min']:.2f})"
            f"  maxdiff {r['max_abs_diff_vs_loop']:.1e}  {flags}",
            flush=True,
        )
    print("\n| variant | ms/step (median) | min | max abs diff vs loop | XLA_FLAGS |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['ms_step_median']:.2f} | {r['ms_step_min']:.2f} |"
            f" {r['max_abs_diff_vs_loop']:.1e} | {r['xla_flags']} |"
        )


if __name__ == "__main__":
    main()
