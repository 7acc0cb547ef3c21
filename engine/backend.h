// Backend: the ops the model is written in, one implementation per device (CPU here, CUDA in its
// own issue). Every op takes engine Tensors, checks shapes, and computes in f32 unless noted.
// Ops that produce gradients for parameters *accumulate* (+=) into them; everything else
// overwrites. Not an autograd system: the model's layers call forward and backward ops explicitly.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace shoal {

// Router parameters for DeepSeek's noaux_tc top-k (sigmoid scores, group-limited selection).
struct RouterParams {
  int64_t n_experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
};

// Per-row allowed token sets (keep-sampling-mask in RL): row i may use the ids
// ids[offsets[i] .. offsets[i+1]). Host tensors: offsets i64 [N+1], ids i32 [M].
struct TokenSets {
  Tensor offsets, ids;
};

// One token draw of Backend::sample_rows: from row `row` of the logits, greedy (the argmax, the
// first of equal maxima) or from softmax(row / temperature) truncated to the top_k most likely
// ids (0 = off), then to the shortest prefix of them holding top_p of the whole mass (1 = off),
// then to the ids with p >= min_p * p_max (0 = off); the id drawn is the first, in descending
// order of logit (equal logits by id), where the kept mass summed so far exceeds u times its
// total. u in [0, 1) comes from the caller (the sample's own generator on the host).
struct TokenDraw {
  int64_t row = 0;
  bool greedy = false;
  float temperature = 1.0f;
  int64_t top_k = 0;
  float top_p = 1.0f, min_p = 0.0f;
  double u = 0;
};

struct AdamWParams {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.0f;
  int64_t step = 1;  // 1-based, for bias correction
};

// One parameter of Backend::adamw_multi (tensors are handles: the update writes through them).
struct AdamWTensor {
  Tensor param, grad, m, v;
  float weight_decay = 0.0f;
};

// A recorded sequence of a backend's ops that runs again, as one launch, on the same memory
// (CUDA graphs): Backend::record makes one.
class OpGraph {
 public:
  virtual ~OpGraph() = default;
  // Enqueues the recorded ops, as the body enqueued them, on the backend's stream: they read
  // whatever the tensors they were recorded with hold at that point in the stream.
  virtual void replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual Allocator& allocator() = 0;
  // Host memory that this device copies to and from fastest (page-locked for CUDA), for buffers
  // reused across calls; CPU tensors like any other.
  virtual Allocator& host_allocator() { return cpu_allocator(); }
  // A device backend's memory: true with the bytes free and in total (false: no such limit known,
  // the CPU). And what a parameter costs it in bytes (its f32 value and any kept copy).
  virtual bool memory_info(size_t& free, size_t& total) const { return false; }
  virtual size_t bytes_per_parameter() const { return sizeof(float); }
  Tensor empty(const Shape& shape, DType dtype = DType::f32) {
    return Tensor::empty(shape, dtype, allocator());
  }
  Tensor zeros(const Shape& shape, DType dtype = DType::f32) {
    Tensor t = empty(shape, dtype);
    zero(t);
    return t;
  }

  // --- memory ---
  virtual void zero(Tensor& t) = 0;
  virtual void copy(const Tensor& src, Tensor& dst) = 0;  // any strides, same shape; converts dtype
  virtual Tensor to_host(const Tensor& t) = 0;            // contiguous CPU copy
  virtual Tensor from_host(const Tensor& t) = 0;          // contiguous copy on this device

  // --- dense algebra ---
  // c = alpha * op(a) @ op(b) + beta * c. 2-D f32 operands whose last stride is 1 (rows may be
  // strided, so head slices of a [N, H*d] activation are valid operands without a copy).
  virtual void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                      float alpha = 1.0f, float beta = 0.0f) = 0;
  // One matmul per group (the MoE experts' GEMMs, in one call so that a backend can run them
  // together): c_g = alpha * op(a_g) @ op(b_g) + beta * c_g for g < group_rows.size(), where a 3-D
  // operand [G, r, s] gives its matrix [g] and a 2-D operand its rows [o_g, o_g + group_rows[g])
  // with o_g the sum of the earlier groups' rows (host counts; the 2-D operands have their sum).
  // So per-expert x_g W_g^T is (x, false, W, true, y) and dW_g += dy_g^T x_g is
  // (dy, true, x, false, dW, 1, 1). Operands as in matmul (f32, unit last stride); empty groups
  // are allowed (a group with no rows along the contraction leaves beta * c_g). Same precision
  // as matmul.
  virtual void grouped_matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                              Tensor& c, const std::vector<int64_t>& group_rows, float alpha = 1.0f,
                              float beta = 0.0f) = 0;
  // One matmul per batch index, all of one shape: c[i] = alpha * op(a[i]) @ op(b[i]) + beta *
  // c[i] for i < B. 3-D f32 operands [B, rows, cols] with unit last stride; the batch and row
  // strides are free, so a per-head slice of a [N, H, d] activation viewed head-first
  // (x.slice(2, 0, dn).transpose(0, 1), [H, N, dn]) is a valid operand without a copy. The three
  // operands have the same B; c's matrices must not overlap. Same precision as matmul.
  virtual void batched_matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                              Tensor& c, float alpha = 1.0f, float beta = 0.0f) = 0;
  // y += alpha * x; same shape; contiguous, or 1-3-D views with unit last stride.
  virtual void add(Tensor& y, const Tensor& x, float alpha = 1.0f) = 0;
  virtual void scale(Tensor& y, float s) = 0;
  virtual double sum_squares(const Tensor& x) = 0;

  // --- normalization ---
  // y = w * x / sqrt(mean(x^2) + eps) over the last dim; rstd[n] saved for backward. x: [N, D].
  virtual void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                               Tensor& rstd) = 0;
  // dx (overwritten), dw (accumulated).
  virtual void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                const Tensor& rstd, Tensor& dx, Tensor& dw) = 0;

  // --- rotary embedding ---
  // In place on x [N, H, d] (last stride 1): rotates pairs by angle positions[n] * inv_freq[i],
  // cos/sin multiplied by attention_scaling. cos_sin: [P, d/2, 2] table (cos, sin) over positions.
  // interleaved: pairs (2i, 2i+1) (DeepSeek checkpoint layout); else pairs (i, i + d/2).
  // inverse: rotate by -angle (the backward of the forward rotation).
  virtual void rope(Tensor& x, const Tensor& positions, const Tensor& cos_sin, bool interleaved,
                    bool inverse) = 0;

  // --- attention ---
  // Causal softmax attention within each sequence of a packed batch. q, k: [N, H, dk];
  // v: [N, H, dv] (last stride 1, other strides free); cu_seqlens: host offsets of the sequences
  // (S+1 entries, from 0 to N). out: [N, H, dv]; lse: [H, N] log-sum-exp of the scaled scores.
  // sparse_idx (DeepSeek Sparse Attention): i32 [N, K] key positions within each token's sequence
  // (-1 = unused slot); when given, query t attends only to those keys (and never past t).
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const std::vector<int64_t>& cu_seqlens, float scale, Tensor& out,
                                 Tensor& lse, const Tensor* sparse_idx = nullptr) = 0;
  // dq, dk, dv overwritten. The selection itself is not differentiated.
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& dout, const Tensor& lse,
                                  const std::vector<int64_t>& cu_seqlens, float scale, Tensor& dq,
                                  Tensor& dk, Tensor& dv, const Tensor* sparse_idx = nullptr) = 0;
  // The attention distribution summed over heads and L1-normalized per query (the target of the
  // DSA indexer's KL loss), recomputed from q, k and lse, into p: per sequence a row-major
  // [L, L] block (blocks packed in sequence order; zero outside the attended set).
  virtual void attention_head_sum_probs(const Tensor& q, const Tensor& k, const Tensor& lse,
                                        const std::vector<int64_t>& cu_seqlens, float scale,
                                        const Tensor* sparse_idx, Tensor& p) = 0;

  // --- DeepSeek Sparse Attention: the lightning indexer ---
  // I[t, s] = scale * sum_h w[t, h] * relu(q[t, h] . k[s]) for s <= t within each sequence, into
  // scores packed like attention_head_sum_probs (-inf above the diagonal). q [N, H, D] (last
  // stride 1), k [N, D], w [N, H].
  virtual void indexer_scores(const Tensor& q, const Tensor& k, const Tensor& w,
                              const std::vector<int64_t>& cu_seqlens, float scale,
                              Tensor& scores) = 0;
  // Gradients of the scores w.r.t. q, k, w (all overwritten) given dscores (same packing).
  virtual void indexer_scores_backward(const Tensor& q, const Tensor& k, const Tensor& w,
                                       const std::vector<int64_t>& cu_seqlens, float scale,
                                       const Tensor& dscores, Tensor& dq, Tensor& dk,
                                       Tensor& dw) = 0;
  // Per query row, the positions of the k highest causal scores (k = min(k, t + 1)); idx i32 [N,
  // k], padded with -1. Exact ties are broken as torch.topk on the CPU breaks them (the reference).
  virtual void topk_rows(const Tensor& scores, const std::vector<int64_t>& cu_seqlens, int64_t k,
                         Tensor& idx) = 0;
  // sum over rows of KL(p_t || softmax(I_t)) over the attended set of each row (causal, or the
  // selected keys when sparse_idx is given); dscores = grad_scale * (softmax(I_t) - p_t) on the
  // set, 0 elsewhere. Returns the sum (f64).
  virtual double indexer_kl(const Tensor& p, const Tensor& scores,
                            const std::vector<int64_t>& cu_seqlens, const Tensor* sparse_idx,
                            float grad_scale, Tensor& dscores) = 0;
  // The reference indexer's fast path, simulated: rows of x [R, D] are rotated by the normalized
  // Hadamard transform (D a power of two) and/or rounded through FP8 e4m3 with one scale per
  // row (amax / 448). Dot products between rotated rows are unchanged up to rounding.
  virtual void hadamard_fp8(Tensor& x, bool hadamard, bool fp8) = 0;

  // --- normalization with bias ---
  // y = (x - mean) * rstd * w + b over the last dim; mean, rstd [N] saved. x, y: [N, D].
  virtual void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                                 Tensor& y, Tensor& mean, Tensor& rstd) = 0;
  // dx overwritten; dw, db accumulated.
  virtual void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                  const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dw,
                                  Tensor& db) = 0;

  // --- MLP pieces ---
  // gate_up: [N, 2I] (gate columns then up columns); h = silu(gate) * up: [N, I].
  virtual void swiglu_forward(const Tensor& gate_up, Tensor& h) = 0;
  virtual void swiglu_backward(const Tensor& dh, const Tensor& gate_up, Tensor& dgate_up) = 0;

  // --- embedding and loss ---
  virtual void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) = 0;
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) = 0;
  // Cross-entropy of logits [N, V] against labels i32 [N] (-100 = ignored). Returns the summed
  // loss (f64) over counted rows; when dlogits is given it is set to grad_scale * d(sum)/d(logits)
  // (may alias logits). Labels out of [0, V) other than -100 are an error.
  virtual double cross_entropy(const Tensor& logits, const Tensor& labels, float grad_scale,
                               Tensor* dlogits) = 0;

  // log p(label) per row of logits [N, V], over the whole vocabulary or, with sets, renormalised
  // over each row's set (which must contain the label); entropy (optional) of the same
  // distribution. Rows labelled -100 give 0. logp, entropy: f32 [N].
  virtual void token_logprobs(const Tensor& logits, const Tensor& labels, const TokenSets* sets,
                              Tensor& logp, Tensor* entropy) = 0;
  // dlogits = dlogp[i] * (onehot(label) - softmax) over the row's distribution (0 outside its
  // set; 0 for rows labelled -100). dlogits may alias logits.
  virtual void token_logprobs_backward(const Tensor& logits, const Tensor& labels,
                                       const TokenSets* sets, const Tensor& dlogp,
                                       Tensor& dlogits) = 0;

  // --- mixture of experts ---
  // noaux_tc: scores = sigmoid(logits); choose with scores + bias (group-limited top-k), weigh
  // with scores (normalized, scaled). logits [N, E] f32; topk_idx i32 [N, K]; topk_w [N, K].
  // When use_given_idx, topk_idx is input (routing replay) and only the weights are computed.
  virtual void route_noaux_tc(const Tensor& logits, const Tensor& bias, const RouterParams& p,
                              Tensor& scores, Tensor& topk_idx, Tensor& topk_w,
                              bool use_given_idx = false) = 0;
  // dlogits [N, E] (overwritten) from dtopk_w [N, K].
  virtual void route_backward(const Tensor& dtopk_w, const Tensor& scores, const Tensor& topk_idx,
                              const RouterParams& p, Tensor& dlogits) = 0;
  // Sorts the N*K (token, slot) assignments by expert: order i32 [N*K] holds flat slot indices
  // n*K + k grouped by expert (stable within an expert); counts (host) the tokens per expert.
  virtual void moe_sort(const Tensor& topk_idx, int64_t n_experts, Tensor& order,
                        std::vector<int64_t>& counts) = 0;
  // moe_sort with the group boundaries left on this backend's device, for grouped_matmul_dev:
  // the same order, and offsets (i32 [n_experts + 1], contiguous, on this device) the prefix sums
  // of the tokens per expert (offsets[0] = 0, offsets[E] = N*K). The reference (this default)
  // runs moe_sort and copies its counts' prefix sums; the CUDA backend never reads them on the
  // host (a bad expert id surfaces at the next synchronisation).
  virtual void moe_sort_offsets(const Tensor& topk_idx, int64_t n_experts, Tensor& order,
                                Tensor& offsets);
  // The MoE experts' forward GEMM with the group boundaries on the device: for g < G,
  // c[o_g .. o_{g+1}) = a[o_g .. o_{g+1}) @ b[g]^T with o = offsets (i32 [G+1], contiguous, on
  // this device; 0 = o_0 <= o_1 <= ... <= o_G = rows). a [rows, k] and c [rows, n] f32 with unit
  // last stride (row strides free), b [G, n, k] f32 with unit last stride; c is overwritten. It is
  // grouped_matmul(a, false, b, true, c, counts) with counts[g] = o_{g+1} - o_g, in the same
  // precision, but a device backend reads the offsets only on the device: no host round trip, so
  // the caller may enqueue on without a synchronisation. The reference (this default) reads them
  // on the host and calls grouped_matmul, and refuses bad offsets there; the CUDA backend in bf16
  // GEMM mode runs its own kernel (kernels/moe/grouped_gemm.h; bad offsets surface at the next
  // synchronisation), in its f32 and tf32 modes the reference.
  virtual void grouped_matmul_dev(const Tensor& a, const Tensor& b, Tensor& c,
                                  const Tensor& offsets);
  // The data-gradient layout (the MoE backward's dh_g = dy_g W_d,g and dx_g = dgu_g W_gu,g): for
  // g < G, c[o_g .. o_{g+1}) = a[o_g .. o_{g+1}) @ b[g] with b [G, k, n] f32 (unit last stride);
  // a [rows, k], c [rows, n] and the offsets as in grouped_matmul_dev; c is overwritten. It is
  // grouped_matmul(a, false, b, false, c, counts); reference and device behaviour as there.
  virtual void grouped_matmul_dev_nn(const Tensor& a, const Tensor& b, Tensor& c,
                                     const Tensor& offsets);
  // The weight-gradient layout (dW_d,g += dy_g^T h_g, dW_gu,g += dgu_g^T x_g: alpha = beta = 1):
  // for g < G, c[g] = alpha a[o_g .. o_{g+1})^T @ b[o_g .. o_{g+1}) + beta c[g], with a [rows, n]
  // and b [rows, k] f32 with unit last stride (row strides free), c [G, n, k] f32 with unit last
  // stride, the offsets as in grouped_matmul_dev. A group without rows leaves beta c[g] (with
  // beta 1, c[g] unchanged). It is grouped_matmul(a, true, b, false, c, counts, alpha, beta);
  // reference and device behaviour as grouped_matmul_dev (the CUDA kernel reduces a group's rows
  // in a fixed order: the result does not vary from call to call).
  virtual void grouped_matmul_dev_tn(const Tensor& a, const Tensor& b, Tensor& c,
                                     const Tensor& offsets, float alpha = 1.0f, float beta = 0.0f);
  // True when the grouped_matmul_dev ops run without reading the offsets on the host, so that a
  // caller gains by keeping the group boundaries on the device (Moe::forward); false for the
  // reference, which reads them (a synchronisation per call on a device).
  virtual bool device_grouped_gemms() const { return false; }
  // counts[g] += o_{g+1} - o_g for g < G: the MoE load counts kept on the device. counts i64 [G]
  // contiguous, offsets i32 [G+1] contiguous, both on this device. The reference (this default)
  // reads both on the host (a synchronisation) and refuses bad offsets; the CUDA backend adds on
  // the device without checking them (the GEMMs that read the same offsets report bad ones).
  virtual void add_group_sizes(const Tensor& offsets, Tensor& counts);
  // The MoE combine in a fixed order: with idx a permutation of [0, R), R = src rows = dst rows x
  // div, dst[t] = (accumulate ? dst[t] : 0) + the sum over the i with idx[i] / div == t, in
  // increasing i, of w[idx[i]] * src[i] (w optional: 1). That is scatter_add_rows (onto zeros
  // unless accumulate), which the reference (this default) calls; the CUDA backend inverts the
  // permutation and gives each dst row to one block (no atomics), so its result does not vary
  // from call to call. An idx that is not a permutation is reported (at the next
  // synchronisation on a device).
  virtual void combine_rows(const Tensor& src, const Tensor& idx, int64_t div, const Tensor* w,
                            bool accumulate, Tensor& dst);
  // dst[i] = src[idx[i] / div] for rows (div = K maps slots to tokens).
  virtual void gather_rows(const Tensor& src, const Tensor& idx, int64_t div, Tensor& dst) = 0;
  // dst[idx[i] / div] += w[idx[i]] * src[i] (w optional: nullptr = 1).
  virtual void scatter_add_rows(const Tensor& src, const Tensor& idx, int64_t div, const Tensor* w,
                                Tensor& dst) = 0;
  // out[idx[i]] = dot(a[i], b[i]) for rows.
  virtual void row_dot_scatter(const Tensor& a, const Tensor& b, const Tensor& idx,
                               Tensor& out) = 0;
  // x[i] *= w[idx[i]] for rows.
  virtual void scale_rows(Tensor& x, const Tensor& idx, const Tensor& w) = 0;

  // --- latent KV cache (absorbed MLA decoding) ---
  // dst[idx[i]] = src[i] for rows (indices distinct; -1: row i is not written); writes new latents
  // into the cache pool.
  virtual void scatter_rows(const Tensor& src, const Tensor& idx, Tensor& dst) = 0;
  // Absorbed paged latent attention (REFERENCE.md §1): q [N, H, R+dr] (W_UK-folded q_nope ++ q_pe,
  // last stride 1) attends, with one KV head shared by all heads, over its sequence's cached
  // latents [c_kv (R); k_pe (dr)]. pool [slots, R+dr] contiguous, slot = page * page_tokens +
  // pos % page_tokens; block_table i32 [S, P] the pages of each sequence by position / page_tokens
  // (-1 unused); row_seq i32 [N] the sequence (row of block_table) of each query row; row_len i32
  // [N]: row i attends to positions 0 .. row_len[i]-1, or, when key_idx (i32 [N, K], -1 = unused
  // slot) is given, to the listed positions (each < row_len[i]). max_len >= every row_len (a host
  // bound that sizes the work split). out [N, H, R] = sum_t softmax_t(scale * q . latent_t) c_kv_t,
  // softmax in f32; a row with no key gives 0. Index tensors may be host or device tensors.
  virtual void latent_attention(const Tensor& q, const Tensor& pool, int64_t page_tokens,
                                const Tensor& block_table, const Tensor& row_seq,
                                const Tensor& row_len, int64_t max_len, const Tensor* key_idx,
                                float scale, Tensor& out) = 0;

  // --- sampling ---
  // One token per draw from logits [R, V] (f32, unit last stride; each draw's row < R): ids and
  // their log-probs under the distribution drawn from (temperature and truncation applied; greedy:
  // the model's own distribution), on the host. The CPU backend computes exactly
  // engine/generate's sample_token; the CUDA backend the same draw up to summation order
  // (kernels/sampling/sampling.h).
  virtual void sample_rows(const Tensor& logits, const std::vector<TokenDraw>& draws,
                           std::vector<int32_t>& ids, std::vector<float>& logprobs) = 0;

  // --- optimizer ---
  // One AdamW step with decoupled weight decay; param/grad/m/v same shape, f32.
  virtual void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                     const AdamWParams& p) = 0;
  // Global-norm gradient clipping without a host round trip: clip (f64 [2] on this device) gets
  // the L2 norm of all grads (their squares summed in f64) and the factor
  // float(max_norm / (norm + 1e-6)) when max_norm > 0 and norm > max_norm, else 1, as
  // ParamSet::clip_grad_norm computes them. The grads are left as they are (adamw_multi applies
  // the factor). Contiguous f32 grads.
  virtual void grad_clip_factor(const std::vector<Tensor>& grads, double max_norm,
                                Tensor& clip) = 0;
  // The optimizer's step over all its parameters at once: each entry as adamw() with its own
  // weight_decay (p.weight_decay is not used) and its gradient first multiplied by float(clip[1])
  // (clip as grad_clip_factor leaves it; nullptr: 1), so equal to scaling the grads and then one
  // adamw per tensor. Parameters must not overlap. The CUDA backend refreshes its bf16 GEMM copies
  // of the parameters in the same pass.
  virtual void adamw_multi(const std::vector<AdamWTensor>& tensors, const AdamWParams& p,
                           const Tensor* clip) = 0;

  // --- recording ---
  // Records the ops `body` enqueues on this backend, without running them, into an OpGraph that
  // replays them with one launch (a device backend's way around the host's per-op launch cost).
  // The body must be closed over memory: every tensor it allocates is freed before it returns
  // (its memory then belongs to the recording and is reused by each replay), and it frees no
  // tensor allocated before it; results go into tensors allocated before. Ops that need the host
  // in the middle (a copy to or from the host, a read of a count) cannot be recorded. Returns
  // nullptr with `why` set when nothing was recorded: the backend cannot record (this default:
  // the CPU has no launches to save), or the body did something that cannot be recorded. The
  // backend stays usable either way; what the body did to host state happened once.
  virtual std::unique_ptr<OpGraph> record(const std::function<void()>& body, std::string& why);
};

std::unique_ptr<Backend> make_cpu_backend();
Backend& cpu_backend();  // process-wide CPU backend

// Batch-invariant GEMMs. While a BatchInvariance is alive on a thread, the CPU backend's matmul
// (and the grouped and batched matmuls built on it) called from that thread computes every output
// element as one chain of fused multiply-adds in k order (engine/cpu/ordered_gemm.h): a row's
// result depends only on its own inputs, not on the other rows of the call, the thread count, or
// trailing zero terms. Model::forward_cached opens one, so that a generated sequence does not
// depend on which requests shared its batches (continuous batching is timing-dependent) and a
// resumed or repeated run samples the same tokens. Other backends ignore it (cuBLAS is not batch
// invariant). Nests.
class BatchInvariance {
 public:
  BatchInvariance() : was_(active_) { active_ = true; }
  ~BatchInvariance() { active_ = was_; }
  BatchInvariance(const BatchInvariance&) = delete;
  BatchInvariance& operator=(const BatchInvariance&) = delete;
  static bool active() { return active_; }

 private:
  bool was_;
  static inline thread_local bool active_ = false;
};

}  // namespace shoal
