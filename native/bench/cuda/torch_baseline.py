#!/usr/bin/env python3
"""PyTorch baseline for bench_decode: the same absorbed MLA decode math as bmm + softmax on the
same shapes (bf16 q and latent cache gathered contiguously, f32 softmax), timed with CUDA events
(batches of back-to-back calls, median over batches, inputs rotated past L2). Also measures the two ceilings used for the floors: device copy
bandwidth (bytes read + written) and a large bf16 matmul rate.

usage: torch_baseline.py OUT.csv   (lines: name,ms ; copy_GBps,x ; matmul_TFLOPs,x)
"""
import math
import sys

import torch


def shapes():
    v = []
    for B in (1, 8, 32, 64, 128):
        for L in (1024, 4096, 16384):
            v.append((f"B{B}_L{L}_H128", B, L, 128, 1, False))
    for H in (16, 32, 64):
        v.append((f"B128_L4096_H{H}", 128, 4096, H, 1, False))
    v.append(("B128_L4096_H128_n2", 128, 4096, 128, 2, False))
    v.append(("B128_uneven_H128", 128, 0, 128, 1, True))
    return v


def seq_len(L, uneven, b):
    return 64 + (b * b * 37 + b * 101) % 16000 if uneven else L


def timed(fn, iters, rot, per_batch=None):
    """Median over `iters` batches of back-to-back calls (rotating inputs), per call in ms."""
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(3):
        fn(i % rot)
    torch.cuda.synchronize()
    if per_batch is None:
        s.record()
        fn(0)
        e.record()
        e.synchronize()
        per_batch = max(rot, min(200, int(2.0 / max(s.elapsed_time(e), 1e-3))))
    t = []
    k = 0
    for i in range(iters):
        s.record()
        for _ in range(per_batch):
            fn(k % rot)
            k += 1
        e.record()
        e.synchronize()
        t.append(s.elapsed_time(e) / per_batch)
    t.sort()
    return t[len(t) // 2]


def main():
    out = sys.argv[1]
    dev = torch.device("cuda")
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    rows = []
    # ceilings
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    ms = timed(lambda i: b.copy_(a), 10, 1, 5)
    rows.append(("copy_GBps", 2 * n / (ms * 1e-3) / 1e9))
    del a, b
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    ms = timed(lambda i: x @ y, 10, 1, 5)
    rows.append(("matmul_TFLOPs", 2 * 8192**3 / (ms * 1e-3) / 1e12))
    del x, y
    scale = 1 / math.sqrt(192)
    for name, B, L, H, nq, uneven in shapes():
        lens = [seq_len(L, uneven, b) for b in range(B)]
        Lmax = max(lens)
        kv_bytes = B * Lmax * 576 * 2
        rot = max(1, min(64, (3 * l2) // kv_bytes + 1))
        kvs = [torch.randn(B, Lmax, 576, device=dev, dtype=torch.bfloat16) for _ in range(rot)]
        qs = [torch.randn(B, nq * H, 576, device=dev, dtype=torch.bfloat16) for _ in range(rot)]
        mask = None
        if nq > 1 or uneven:
            # row (token j, head h) sees keys [0, L_b - nq + j]
            kpos = torch.arange(Lmax, device=dev).view(1, 1, Lmax)
            lt = torch.tensor(lens, device=dev).view(B, 1, 1)
            j = torch.arange(nq, device=dev).repeat_interleave(H).view(1, nq * H, 1)
            mask = torch.where(kpos < lt - nq + j + 1, 0.0, float("-inf"))

        def step(i):
            kv = kvs[i]
            s = torch.bmm(qs[i], kv.transpose(1, 2)).float() * scale
            if mask is not None:
                s = s + mask
            p = torch.softmax(s, dim=-1).to(torch.bfloat16)
            return torch.bmm(p, kv[..., :512])

        try:
            ms = timed(step, 7, rot)
        except torch.OutOfMemoryError:
            ms = float("nan")
        # the same work captured in one CUDA graph (GPU time without host launch overhead)
        gms = float("nan")
        try:
            reps = max(rot, min(64, int(1.0 / max(ms, 1e-3))))
            g = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step(0)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(g):
                for r in range(reps):
                    step(r % rot)
            gms = timed(lambda i: g.replay(), 7, 1, 1) / reps
            del g
        except Exception as e:  # noqa: BLE001 - report and go on with the eager number
            print(f"graph capture failed for {name}: {e}", flush=True)
        rows.append((name, ms))
        rows.append((name + "@graph", gms))
        print(f"torch {name}: eager {ms:.4f} ms, graph {gms:.4f} ms", flush=True)
        del kvs, qs, mask
        torch.cuda.empty_cache()
    with open(out, "w") as f:
        for k, v in rows:
            f.write(f"{k},{v}\n")


if __name__ == "__main__":
    main()
