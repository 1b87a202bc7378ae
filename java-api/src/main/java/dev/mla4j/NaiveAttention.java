package dev.mla4j;

import java.util.Objects;
import java.util.Optional;
import java.util.function.Function;

/**
 * A plain-Java MLA layer for one query token, in the decompressed (MHA) form: k and v of every
 * cached token are rebuilt with kv_b_proj, then ordinary softmax attention and o_proj. Used by
 * {@link Main} to check the library's absorbed decode; slow and single-threaded on purpose.
 */
final class NaiveAttention {
    private final MlaConfig cfg;
    private final Function<String, Optional<Tensor>> weights;

    NaiveAttention(MlaConfig cfg, Function<String, Optional<Tensor>> weights) {
        this.cfg = Objects.requireNonNull(cfg);
        this.weights = Objects.requireNonNull(weights);
    }

    /** A weight as an accessor that applies FP8 block scales. */
    private final class Matrix {
        final Tensor w;
        final Tensor scale;
        final long cols;

        Matrix(String name) {
            w = weights.apply(name + ".weight").orElseThrow(() -> new IllegalArgumentException(name + ".weight missing"));
            scale = w.dtype() == DType.F8_E4M3 ? weights.apply(name + ".weight_scale_inv").orElseThrow() : null;
            cols = w.rank() == 2 ? w.dim(1) : 1;
        }

        float[] row(long r) {
            float[] out = new float[(int) cols];
            for (int c = 0; c < cols; c++) {
                float v = w.getFloat(r * cols + c);
                if (scale != null) {
                    v *= scale.getFloat((r / 128) * scale.dim(1) + c / 128);
                }
                out[c] = v;
            }
            return out;
        }

        /** y = W x over rows [0, rows). */
        float[] apply(float[] x) {
            long rows = w.dim(0);
            float[] y = new float[(int) rows];
            for (long r = 0; r < rows; r++) {
                float[] row = row(r);
                double s = 0;
                for (int c = 0; c < row.length; c++) {
                    s += (double) row[c] * x[c];
                }
                y[(int) r] = (float) s;
            }
            return y;
        }
    }

    private float[] rmsNorm(float[] x, String name) {
        Matrix g = new Matrix(name);
        double ss = 0;
        for (float v : x) {
            ss += (double) v * v;
        }
        double inv = 1.0 / Math.sqrt(ss / x.length + cfg.rmsNormEps());
        float[] out = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            out[i] = (float) (x[i] * inv) * g.w.getFloat(i);
        }
        return out;
    }

    /**
     * The layer output [hidden_size] for one token at position {@code position}, attending to
     * {@code latent} [L, kv_lora_rank] and {@code kRope} [L, rope_dim] (the cache contents: normalized
     * latents and rotated keys in half-split layout, the token's own entry last).
     */
    float[] forward(float[] hidden, int position, float[] latent, float[] kRope, int length) {
        int h = cfg.numHeads();
        int dn = cfg.qkNopeHeadDim();
        int dr = cfg.qkRopeHeadDim();
        int dv = cfg.vHeadDim();
        int dc = cfg.kvLoraRank();
        float[] q;
        if (cfg.hasQueryCompression()) {
            q = new Matrix("q_b_proj").apply(rmsNorm(new Matrix("q_a_proj").apply(hidden), "q_a_layernorm"));
        } else {
            q = new Matrix("q_proj").apply(hidden);
        }
        float[][] tables = cfg.ropeTables(new int[]{position});
        float[] cos = tables[0];
        float[] sin = tables[1];
        double scale = cfg.effectiveSoftmaxScale();
        Matrix kvB = new Matrix("kv_b_proj");
        float[] attn = new float[h * dv];
        for (int head = 0; head < h; head++) {
            int base = head * (dn + dr);
            float[] pe = new float[dr];
            for (int i = 0; i < dr; i++) {
                // interleaved pairs (x0,x1),(x2,x3)... are first permuted to halves (x0,x2,...,x1,x3,...)
                pe[i] = cfg.ropeInterleave()
                        ? (i < dr / 2 ? q[base + dn + 2 * i] : q[base + dn + 2 * (i - dr / 2) + 1])
                        : q[base + dn + i];
            }
            float[] rot = new float[dr];
            for (int i = 0; i < dr; i++) {
                float rh = i < dr / 2 ? -pe[i + dr / 2] : pe[i - dr / 2];
                rot[i] = pe[i] * cos[i] + rh * sin[i];
            }
            // decompress this head's keys and values for every cached token
            float[][] wuk = new float[dn][];
            float[][] wuv = new float[dv][];
            for (int i = 0; i < dn; i++) {
                wuk[i] = kvB.row((long) head * (dn + dv) + i);
            }
            for (int i = 0; i < dv; i++) {
                wuv[i] = kvB.row((long) head * (dn + dv) + dn + i);
            }
            double[] scores = new double[length];
            double max = Double.NEGATIVE_INFINITY;
            float[][] values = new float[length][dv];
            for (int j = 0; j < length; j++) {
                double s = 0;
                for (int i = 0; i < dn; i++) {
                    double k = 0;
                    for (int c = 0; c < dc; c++) {
                        k += (double) wuk[i][c] * latent[j * dc + c];
                    }
                    s += q[base + i] * k;
                }
                for (int i = 0; i < dr; i++) {
                    s += (double) rot[i] * kRope[j * dr + i];
                }
                for (int i = 0; i < dv; i++) {
                    double v = 0;
                    for (int c = 0; c < dc; c++) {
                        v += (double) wuv[i][c] * latent[j * dc + c];
                    }
                    values[j][i] = (float) v;
                }
                scores[j] = s * scale;
                max = Math.max(max, scores[j]);
            }
            double sum = 0;
            for (int j = 0; j < length; j++) {
                scores[j] = Math.exp(scores[j] - max);
                sum += scores[j];
            }
            for (int i = 0; i < dv; i++) {
                double o = 0;
                for (int j = 0; j < length; j++) {
                    o += scores[j] * values[j][i];
                }
                attn[head * dv + i] = (float) (o / sum);
            }
        }
        return new Matrix("o_proj").apply(attn);
    }
}
