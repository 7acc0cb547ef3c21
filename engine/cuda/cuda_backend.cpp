// The CUDA backend (cuda_backend.h): validates shapes on the host as the CPU backend does, packs
// the kernels' parameter structs from Tensors and launches on the device's stream. GEMMs through
// cuBLAS (f32 without TF32, or CudaGemm's tensor-core modes); every other op is a kernel under
// kernels/. Host-side inputs of the interface (cu_seqlens, token sets) are uploaded per call; index
// tensors given on the host are uploaded too. Input checks that need device data (ids, labels,
// expert and sparse indices) run in the kernels and surface at the next synchronisation
// (cuda_context.h).
#include "engine/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/backend_checks.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/cuda_context.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/latent_decode.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/gemm/bf16_rows.h"
#include "kernels/indexer/indexer.h"
#include "kernels/indexer/topk_select.h"
#include "kernels/loss/loss.h"
#include "kernels/memory/copy.h"
#include "kernels/moe/expert_gemm.h"
#include "kernels/moe/grouped_gemm.h"
#include "kernels/moe/moe.h"
#include "kernels/norm/layernorm.h"
#include "kernels/norm/rmsnorm.h"
#include "kernels/optim/adamw.h"
#include "kernels/rope/rope.h"
#include "kernels/rows/row_ops.h"
#include "kernels/sampling/sampling.h"

namespace shoal {
namespace {

using cuda::FaultOp;

int32_t op_id(FaultOp op) {
  return int32_t(op);
}

void check_dev(const Tensor& t, const char* what) {
  SHOAL_CHECK(t.defined(), "{}: undefined tensor", what);
  SHOAL_CHECK(t.device() == Device::cuda, "{}: tensor {} is not on the CUDA device", what,
              t.describe());
}
// The interface's contracts (backend_checks.h), for device tensors.
void check_f32(const Tensor& t, const char* what) {
  backend_checks::f32(t, Device::cuda, what);
}
void check_contig_f32(const Tensor& t, const char* what) {
  backend_checks::contig_f32(t, Device::cuda, what);
}
void check_rows(const Tensor& t, const char* what) {
  backend_checks::rows(t, Device::cuda, what);
}
using backend_checks::packed_square_size;
using backend_checks::row_stride;
void check_cu(const std::vector<int64_t>& cu, int64_t n, const char* what) {
  backend_checks::cu_seqlens(cu, n, what);
}

kernels::ElemType elem_type(DType t) {
  switch (t) {
    case DType::f32:
      return kernels::ElemType::f32;
    case DType::f64:
      return kernels::ElemType::f64;
    case DType::bf16:
      return kernels::ElemType::bf16;
    case DType::f16:
      return kernels::ElemType::f16;
    case DType::f8e4m3:
      return kernels::ElemType::f8e4m3;
    case DType::i32:
      return kernels::ElemType::i32;
    case DType::i64:
      return kernels::ElemType::i64;
    case DType::u8:
    case DType::boolean:
      return kernels::ElemType::u8;
    case DType::f8e5m2:
      break;
  }
  SHOAL_FAIL("CUDA copy: dtype {} is not supported on the device yet", dtype_name(t));
}

// Page-locked host memory (Backend::host_allocator): copies between it and the device run at the
// link's rate with no staging. Blocks come from and go back to the driver each time (slow), so
// callers keep their buffers.
class PinnedAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t err = cudaMallocHost(&p, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();
      SHOAL_FAIL("CUDA: page-locked host allocation of {} bytes failed ({}: {})", bytes,
                 cudaGetErrorName(err), cudaGetErrorString(err));
    }
    return p;
  }
  void deallocate(void* p, size_t) override {
    if (p != nullptr && cudaFreeHost(p) != cudaSuccess) cudaGetLastError();
  }
  Device device() const override { return Device::cpu; }
};

// A recorded op sequence: an instantiated CUDA graph, launched on the backend's stream. Its
// allocations are graph allocations (freed inside it, reused by each launch).
class CudaOpGraph final : public OpGraph {
 public:
  CudaOpGraph(cudaGraphExec_t exec, cudaStream_t stream, int device)
      : exec_(exec), stream_(stream), device_(device) {}
  ~CudaOpGraph() override {
    // Safe while a launch is in flight: the executable is released when it completes.
    if (cudaGraphExecDestroy(exec_) != cudaSuccess) cudaGetLastError();
  }
  void replay() override {
    int prev = 0;
    cudaGetDevice(&prev);
    if (prev != device_) cudaSetDevice(device_);
    const cudaError_t err = cudaGraphLaunch(exec_, stream_);
    if (prev != device_) cudaSetDevice(prev);
    SHOAL_CUDA_CHECK(err);
  }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
  int device_;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, const CudaBackendOptions& options)
      : ctx_(cuda::context(device)), opt_(options) {}
  ~CudaBackend() override {
    // Nothing queued on the lanes outlives a grouped_matmul call (it joins them), so destroying
    // them cannot cut work short; errors here cannot be reported from a destructor.
    for (GemmLane& l : lanes_) {
      cublasDestroy(l.cublas);
      cudaEventDestroy(l.done);
      cudaStreamDestroy(l.stream);
    }
    if (fork_) cudaEventDestroy(fork_);
  }

  Device device() const override { return Device::cuda; }
  Allocator& allocator() override { return *ctx_.allocator; }
  // Free memory as the driver reports it plus what the stream-ordered pool holds cached (freed
  // blocks it would hand out again).
  bool memory_info(size_t& free, size_t& total) const override {
    int prev = 0;
    cudaGetDevice(&prev);
    if (prev != ctx_.device) cudaSetDevice(ctx_.device);
    const cudaError_t err = cudaMemGetInfo(&free, &total);
    uint64_t reserved = 0, used = 0;
    cudaMemPool_t pool = nullptr;
    if (err == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, ctx_.device) == cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved) ==
            cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) == cudaSuccess &&
        reserved > used)
      free += size_t(reserved - used);
    if (prev != ctx_.device) cudaSetDevice(prev);
    if (err != cudaSuccess) cudaGetLastError();
    return err == cudaSuccess;
  }
  // The f32 value, and in bf16 GEMM mode its kept bf16 copy.
  size_t bytes_per_parameter() const override {
    return sizeof(float) + (opt_.gemm == CudaGemm::bf16 ? sizeof(uint16_t) : 0);
  }
  Allocator& host_allocator() override {
    static PinnedAllocator* pinned = new PinnedAllocator;  // never destroyed, like the contexts
    return *pinned;
  }

  // ---------------------------------------------------------------- memory

  void zero(Tensor& t) override {
    check_dev(t, "zero");
    if (t.numel() == 0) return;
    if (t.is_contiguous()) {
      SHOAL_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream()));
      return;
    }
    kernels::StridedCopyParams p = strided(t, t);
    SHOAL_CUDA_CHECK(kernels::strided_zero_cuda(p, stream()));
  }

  void copy(const Tensor& src, Tensor& dst) override {
    SHOAL_CHECK(src.defined() && dst.defined(), "copy: undefined tensor");
    SHOAL_CHECK(src.shape() == dst.shape(), "copy between shapes {} and {}", shape_str(src.shape()),
                shape_str(dst.shape()));
    const bool sd = src.device() == Device::cuda, dd = dst.device() == Device::cuda;
    if (!sd && !dd) {
      dst.copy_from(src);
      return;
    }
    if (sd && !dd) {
      if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
        if (src.nbytes() > 0)  // straight into dst (fast when dst is page-locked)
          SHOAL_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(),
                                           cudaMemcpyDeviceToHost, stream()));
        cuda::synchronize_and_check(ctx_);
        return;
      }
      Tensor h = to_host(src);
      dst.copy_from(h);
      return;
    }
    if (!sd) {  // host -> device: convert on the host, upload, then place on the device
      Tensor h = src.dtype() == dst.dtype() ? src.contiguous() : src.to(dst.dtype());
      if (dst.is_contiguous()) {
        upload(h, dst.raw());
        return;
      }
      Tensor tmp = from_host(h);
      copy(tmp, dst);
      return;
    }
    if (src.numel() == 0) return;
    if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
      SHOAL_CUDA_CHECK(
          cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToDevice, stream()));
      return;
    }
    SHOAL_CUDA_CHECK(kernels::strided_copy_cuda(strided(src, dst), stream()));
  }

  Tensor to_host(const Tensor& t) override {
    SHOAL_CHECK(t.defined(), "to_host: undefined tensor");
    if (t.device() == Device::cpu) return t.clone();
    Tensor c = t;
    if (!t.is_contiguous()) {
      c = empty(t.shape(), t.dtype());
      copy(t, c);
    }
    Tensor h = Tensor::empty(t.shape(), t.dtype());
    // Read through Storage::data: a read leaves the storage's version (and a parameter's bf16 GEMM
    // copy) current.
    const void* src =
        static_cast<const char*>(c.storage()->data) + c.offset() * dtype_size(c.dtype());
    if (h.nbytes() > 0)
      SHOAL_CUDA_CHECK(cudaMemcpyAsync(h.raw(), src, h.nbytes(), cudaMemcpyDeviceToHost, stream()));
    cuda::synchronize_and_check(ctx_);
    return h;
  }

  Tensor from_host(const Tensor& t) override {
    SHOAL_CHECK(t.defined(), "from_host: undefined tensor");
    Tensor d = empty(t.shape(), t.dtype());
    if (t.device() == Device::cuda) {
      copy(t, d);
      return d;
    }
    upload(t.contiguous(), d.raw());
    return d;
  }

  // ---------------------------------------------------------------- dense algebra

  void matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
              float beta) override {
    check_rows(a, "matmul a");
    check_rows(b, "matmul b");
    check_rows(c, "matmul c");
    const int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1);
    const int64_t kb = tb ? b.size(1) : b.size(0), n = tb ? b.size(0) : b.size(1);
    SHOAL_CHECK(k == kb && c.size(0) == m && c.size(1) == n, "matmul shapes: {}{} x {}{} -> {}",
                a.describe(), ta ? "^T" : "", b.describe(), tb ? "^T" : "", c.describe());
    if (m == 0 || n == 0) return;
    if (k == 0) {  // c = beta * c
      if (beta != 1.0f)
        SHOAL_CUDA_CHECK(
            kernels::scale_rows_strided_cuda(c.f32(), m, n, row_stride(c), beta, stream()));
      return;
    }
    SHOAL_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX, "matmul: dims exceed int32");
    if (opt_.gemm == CudaGemm::bf16) {  // bf16 operands (a parameter's kept copy), f32 out
      const Bf16Operand a16 = bf16_operand(a), b16 = bf16_operand(b);
      gemm_bf16(ctx_.cublas, a16.ptr, a16.row_stride, ta, b16.ptr, b16.row_stride, tb, c, m, n, k,
                alpha, beta);
      return;
    }
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    if (opt_.gemm == CudaGemm::tf32) {
      SHOAL_CUBLAS_CHECK(
          cublasGemmEx(ctx_.cublas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                       int(n), int(m), int(k), &alpha, b.f32(), CUDA_R_32F, int(row_stride(b)),
                       a.f32(), CUDA_R_32F, int(row_stride(a)), &beta, c.f32(), CUDA_R_32F,
                       int(row_stride(c)), CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
      return;
    }
    SHOAL_CUBLAS_CHECK(cublasSgemm(ctx_.cublas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m), int(k), &alpha,
                                   b.f32(), int(row_stride(b)), a.f32(), int(row_stride(a)), &beta,
                                   c.f32(), int(row_stride(c))));
  }

  // CudaGrouped picks the path. loop: one GEMM per group on the backend's stream; in bf16 mode
  // each operand is rounded once (or a parameter's kept bf16 copy used) for all groups. streams
  // (bf16): the same bf16 operands, the groups' GEMMs (bf16 in, f32 accumulate and out) on kLanes
  // streams at once, since the MoE experts' GEMMs (~1,500 x 512 x 2,048) are too small to fill the
  // GPU one by one. batched: one cuBLAS grouped call, TF32 operands. In the moe-2b step with bf16
  // GEMMs batched is the fastest (the per-group bf16 GEMMs lose there, likely to cuBLAS's
  // per-shape kernel choice for row counts that change every step); with tf32 GEMMs loop is
  // (docs/PERFORMANCE.md). loop is the default.
  void grouped_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c,
                      const std::vector<int64_t>& group_rows, float alpha, float beta) override {
    std::vector<backend_checks::GemmGroup> groups =
        backend_checks::grouped_matmul(a, b, c, group_rows, Device::cuda);
    const bool bf16 = opt_.gemm == CudaGemm::bf16;
    const bool batched = opt_.grouped == CudaGrouped::batched && opt_.gemm != CudaGemm::f32;
    const bool streams = opt_.grouped == CudaGrouped::streams && bf16;
    if (!bf16 && !batched) {
      for (auto& g : groups) matmul(g.a, ta, g.b, tb, g.c, alpha, beta);
      return;
    }
    struct Job {
      size_t group;
      int64_t m, n, k;
    };
    std::vector<Job> jobs;
    for (size_t g = 0; g < groups.size(); ++g) {
      check_rows(groups[g].c, "grouped_matmul c");
      const auto [m, n, k] = gemm_dims(groups[g].a, ta, groups[g].b, tb, groups[g].c);
      if (m == 0 || n == 0) continue;
      if (k == 0) {
        matmul(groups[g].a, ta, groups[g].b, tb, groups[g].c, alpha, beta);  // c = beta * c
        continue;
      }
      jobs.push_back({g, m, n, k});
    }
    if (jobs.empty()) return;
    if (batched) {
      // One group of one product per job; the pointer arrays live on the device.
      const size_t nj = jobs.size();
      std::vector<cublasOperation_t> op_a(nj, tb ? CUBLAS_OP_T : CUBLAS_OP_N),
          op_b(nj, ta ? CUBLAS_OP_T : CUBLAS_OP_N);
      std::vector<int> m(nj), n(nj), k(nj), lda(nj), ldb(nj), ldc(nj), ones(nj, 1);
      std::vector<float> alphas(nj, alpha), betas(nj, beta);
      Tensor ptrs = Tensor::empty({int64_t(3 * nj)}, DType::i64);
      for (size_t i = 0; i < nj; ++i) {
        const backend_checks::GemmGroup& g = groups[jobs[i].group];
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, as in matmul.
        m[i] = int(jobs[i].n), n[i] = int(jobs[i].m), k[i] = int(jobs[i].k);
        lda[i] = int(row_stride(g.b)), ldb[i] = int(row_stride(g.a)), ldc[i] = int(row_stride(g.c));
        ptrs.i64()[i] = int64_t(reinterpret_cast<uintptr_t>(g.b.raw()));
        ptrs.i64()[nj + i] = int64_t(reinterpret_cast<uintptr_t>(g.a.raw()));
        ptrs.i64()[2 * nj + i] = int64_t(reinterpret_cast<uintptr_t>(g.c.raw()));
      }
      const Tensor dptrs = from_host(ptrs);
      auto* p = static_cast<void**>(dptrs.raw());
      SHOAL_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
          ctx_.cublas, op_a.data(), op_b.data(), m.data(), n.data(), k.data(), alphas.data(),
          const_cast<const void* const*>(p), CUDA_R_32F, lda.data(),
          const_cast<const void* const*>(p + nj), CUDA_R_32F, ldb.data(), betas.data(), p + 2 * nj,
          CUDA_R_32F, ldc.data(), int(nj), ones.data(), CUBLAS_COMPUTE_32F_FAST_TF32));
      return;
    }
    const Bf16Operand a16 = bf16_operand(a), b16 = bf16_operand(b);
    // Group g's matrix of a bf16 operand: as backend_checks::grouped_matmul slices the f32 one.
    std::vector<int64_t> offsets(group_rows.size() + 1, 0);
    for (size_t g = 0; g < group_rows.size(); ++g) offsets[g + 1] = offsets[g] + group_rows[g];
    auto part = [&](const Bf16Operand& o, size_t g) {
      return o.ptr + (o.matrix_stride ? int64_t(g) * o.matrix_stride : offsets[g] * o.row_stride);
    };
    if (!streams) {
      for (const Job& j : jobs)
        gemm_bf16(ctx_.cublas, part(a16, j.group), a16.row_stride, ta, part(b16, j.group),
                  b16.row_stride, tb, groups[j.group].c, j.m, j.n, j.k, alpha, beta);
      return;
    }
    ensure_lanes();
    SHOAL_CUDA_CHECK(cudaEventRecord(fork_, stream()));
    for (GemmLane& l : lanes_) SHOAL_CUDA_CHECK(cudaStreamWaitEvent(l.stream, fork_, 0));
    // Largest first, each to the lane with the least work so far.
    std::sort(jobs.begin(), jobs.end(), [](const Job& x, const Job& y) {
      return double(x.m) * double(x.n) * double(x.k) > double(y.m) * double(y.n) * double(y.k);
    });
    double load[kLanes] = {};
    for (const Job& j : jobs) {
      const int lane = int(std::min_element(load, load + kLanes) - load);
      load[lane] += double(j.m) * double(j.n) * double(j.k);
      gemm_bf16(lanes_[size_t(lane)].cublas, part(a16, j.group), a16.row_stride, ta,
                part(b16, j.group), b16.row_stride, tb, groups[j.group].c, j.m, j.n, j.k, alpha,
                beta);
    }
    // Join before returning: per-call bf16 copies are freed (stream-ordered) on the main stream.
    for (GemmLane& l : lanes_) {
      SHOAL_CUDA_CHECK(cudaEventRecord(l.done, l.stream));
      SHOAL_CUDA_CHECK(cudaStreamWaitEvent(stream(), l.done, 0));
    }
  }

  // One cublasGemmStridedBatchedEx (the batch and row strides are the views' own), in the
  // precision matmul uses for the mode: f32 (no tensor cores), TF32 operands, or bf16 operands
  // (a parameter's kept copy, an activation rounded into a contiguous copy per call); f32
  // accumulation and output in all three.
  void batched_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
                      float beta) override {
    const auto g = backend_checks::batched_matmul(a, ta, b, tb, c, Device::cuda);
    if (g.batch == 0 || g.m == 0 || g.n == 0) return;
    if (g.k == 0) {  // c = beta * c, as matmul does it
      for (int64_t i = 0; i < g.batch; ++i) {
        Tensor ci = c.select(0, i);
        matmul(a.select(0, i), ta, b.select(0, i), tb, ci, alpha, beta);
      }
      return;
    }
    SHOAL_CHECK(g.m <= INT32_MAX && g.n <= INT32_MAX && g.k <= INT32_MAX && g.batch <= INT32_MAX,
                "batched_matmul: dims exceed int32");
    const int m = int(g.m), n = int(g.n), k = int(g.k), batch = int(g.batch);
    const int ldc = int(backend_checks::matrix_row_stride(c));
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    const cublasOperation_t op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                            op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (opt_.gemm == CudaGemm::bf16) {
      const Bf16Operand a16 = bf16_operand(a), b16 = bf16_operand(b);
      SHOAL_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          ctx_.cublas, op_b, op_a, n, m, k, &alpha, b16.ptr, CUDA_R_16BF, int(b16.row_stride),
          b16.matrix_stride, a16.ptr, CUDA_R_16BF, int(a16.row_stride), a16.matrix_stride, &beta,
          c.f32(), CUDA_R_32F, ldc, c.stride(0), batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return;
    }
    const int lda = int(backend_checks::matrix_row_stride(a)),
              ldb = int(backend_checks::matrix_row_stride(b));
    if (opt_.gemm == CudaGemm::tf32) {
      SHOAL_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          ctx_.cublas, op_b, op_a, n, m, k, &alpha, b.f32(), CUDA_R_32F, ldb, b.stride(0), a.f32(),
          CUDA_R_32F, lda, a.stride(0), &beta, c.f32(), CUDA_R_32F, ldc, c.stride(0), batch,
          CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
      return;
    }
    SHOAL_CUBLAS_CHECK(cublasSgemmStridedBatched(ctx_.cublas, op_b, op_a, n, m, k, &alpha, b.f32(),
                                                 ldb, b.stride(0), a.f32(), lda, a.stride(0), &beta,
                                                 c.f32(), ldc, c.stride(0), batch));
  }

  void add(Tensor& y, const Tensor& x, float alpha) override {
    check_f32(y, "add y");
    check_f32(x, "add x");
    SHOAL_CHECK(y.shape() == x.shape(), "add: {} vs {}", y.describe(), x.describe());
    kernels::AddParams p;
    p.y = y.f32();
    p.x = x.f32();
    p.alpha = alpha;
    if (y.is_contiguous() && x.is_contiguous()) {
      p.d2 = y.numel();
    } else {
      SHOAL_CHECK(y.ndim() >= 1 && y.ndim() <= 3 && y.stride(-1) == 1 && x.stride(-1) == 1,
                  "add: strided operands must be 1-3-D with unit last stride: {} += {}",
                  y.describe(), x.describe());
      const int nd = y.ndim();
      p.d0 = nd == 3 ? y.size(0) : 1;
      p.d1 = nd >= 2 ? y.size(-2) : 1;
      p.d2 = y.size(-1);
      p.y_s0 = nd == 3 ? y.stride(0) : 0;
      p.x_s0 = nd == 3 ? x.stride(0) : 0;
      p.y_s1 = nd >= 2 ? y.stride(-2) : 0;
      p.x_s1 = nd >= 2 ? x.stride(-2) : 0;
    }
    SHOAL_CUDA_CHECK(kernels::add_cuda(p, stream()));
  }

  void scale(Tensor& y, float s) override {
    check_contig_f32(y, "scale");
    SHOAL_CUDA_CHECK(kernels::scale_cuda(y.f32(), y.numel(), s, stream()));
  }

  double sum_squares(const Tensor& x) override {
    check_contig_f32(x, "sum_squares");
    Tensor scratch = empty({kernels::kSumSquaresBlocks + 1}, DType::f64);
    double* partials = scratch.f64();
    SHOAL_CUDA_CHECK(kernels::sum_squares_cuda(x.numel() ? x.f32() : nullptr, x.numel(), partials,
                                               partials + kernels::kSumSquaresBlocks, stream()));
    double out = 0;
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(&out, partials + kernels::kSumSquaresBlocks, sizeof(double),
                                     cudaMemcpyDeviceToHost, stream()));
    cuda::synchronize_and_check(ctx_);
    return out;
  }

  // ---------------------------------------------------------------- normalization

  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                       Tensor& rstd) override {
    backend_checks::rmsnorm(x, w, y, rstd, Device::cuda);
    const int64_t n = x.size(0), d = x.size(1);
    if (n == 0) return;
    kernels::RmsNormParams p;
    p.x = x.f32();
    p.w = w.f32();
    p.y = y.f32();
    p.rstd = rstd.f32();
    p.rows = n;
    p.dim = d;
    p.x_stride = row_stride(x);
    p.y_stride = row_stride(y);
    p.eps = eps;
    SHOAL_CUDA_CHECK(kernels::rmsnorm_forward_cuda(p, stream()));
  }

  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        Tensor& dx, Tensor& dw) override {
    check_rows(dy, "rmsnorm dy");
    check_rows(x, "rmsnorm x");
    check_rows(dx, "rmsnorm dx");
    check_contig_f32(w, "rmsnorm w");
    check_contig_f32(dw, "rmsnorm dw");
    check_contig_f32(rstd, "rmsnorm rstd");
    const int64_t n = x.size(0), d = x.size(1);
    SHOAL_CHECK(dy.shape() == x.shape() && dx.shape() == x.shape() && dw.numel() == d &&
                    w.numel() == d && rstd.numel() == n,
                "rmsnorm backward shapes");
    if (n == 0 || d == 0) return;
    Tensor scratch = empty({kernels::norm_dw_scratch_floats(n, d)});
    kernels::RmsNormBackwardParams p;
    p.dy = dy.f32();
    p.x = x.f32();
    p.w = w.f32();
    p.rstd = rstd.f32();
    p.dx = dx.f32();
    p.dw = dw.f32();
    p.scratch = scratch.f32();
    p.rows = n;
    p.dim = d;
    p.dy_stride = row_stride(dy);
    p.x_stride = row_stride(x);
    p.dx_stride = row_stride(dx);
    SHOAL_CUDA_CHECK(kernels::rmsnorm_backward_cuda(p, stream()));
  }

  // ---------------------------------------------------------------- rotary embedding

  void rope(Tensor& x, const Tensor& positions, const Tensor& cos_sin, bool interleaved,
            bool inverse) override {
    check_f32(x, "rope x");
    check_contig_f32(cos_sin, "rope table");
    SHOAL_CHECK(x.ndim() == 3 && x.stride(2) == 1,
                "rope: x must be [N, H, d] with unit last stride, got {}", x.describe());
    SHOAL_CHECK(positions.dtype() == DType::i32 && positions.numel() == x.size(0),
                "rope: positions must be i32[{}], got {}", x.size(0), positions.describe());
    const int64_t d = x.size(2), half = d / 2;
    SHOAL_CHECK(
        d % 2 == 0 && cos_sin.ndim() == 3 && cos_sin.size(1) == half && cos_sin.size(2) == 2,
        "rope: table {} does not match head dim {}", cos_sin.describe(), d);
    Tensor pos = on_device(positions, "rope positions");
    kernels::RopeParams p;
    p.x = x.f32();
    p.n = x.size(0);
    p.heads = x.size(1);
    p.dim = d;
    p.stride_n = x.stride(0);
    p.stride_h = x.stride(1);
    p.positions = pos.i32();
    p.table = cos_sin.f32();
    p.max_pos = cos_sin.size(0);
    p.interleaved = interleaved;
    p.inverse = inverse;
    p.status = ctx_.status;
    p.op = op_id(FaultOp::rope);
    SHOAL_CUDA_CHECK(kernels::rope_cuda(p, stream()));
  }

  // ---------------------------------------------------------------- attention

  void check_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                       const std::vector<int64_t>& cu, const Tensor& out, const Tensor& lse) {
    backend_checks::attention(q, k, v, cu, out, lse, Device::cuda);
    SHOAL_CHECK(
        q.size(2) <= kernels::kAttentionMaxHeadDim && v.size(2) <= kernels::kAttentionMaxHeadDim,
        "attention: head dims {} / {} exceed the CUDA kernel's {}", q.size(2), v.size(2),
        kernels::kAttentionMaxHeadDim);
  }

  // Uploads cu_seqlens followed by each sequence's offset in the packed [L, L] blocks: i64[2(S+1)].
  Tensor upload_seqs(const std::vector<int64_t>& cu) {
    std::vector<int64_t> host(cu);
    int64_t off = 0;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      host.push_back(off);
      off += (cu[s + 1] - cu[s]) * (cu[s + 1] - cu[s]);
    }
    host.push_back(off);
    Tensor d = empty({int64_t(host.size())}, DType::i64);
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(d.raw(), host.data(), host.size() * sizeof(int64_t),
                                     cudaMemcpyHostToDevice, stream()));
    return d;
  }

  Tensor sparse_on_device(const Tensor* idx, int64_t n) {
    if (!idx) return {};
    backend_checks::sparse_layout(*idx, n);
    SHOAL_CHECK(idx->size(1) >= 1, "sparse attention: K must be >= 1");
    return on_device(*idx, "sparse attention indices");
  }

  kernels::AttentionParams attention_params(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& seqs, int64_t n_seqs, float scale,
                                            const Tensor& sparse, FaultOp op) {
    kernels::AttentionParams p;
    p.q = q.f32();
    p.k = k.f32();
    p.v = v.defined() ? v.f32() : nullptr;
    p.q_sn = q.stride(0);
    p.q_sh = q.stride(1);
    p.k_sn = k.stride(0);
    p.k_sh = k.stride(1);
    if (v.defined()) {
      p.v_sn = v.stride(0);
      p.v_sh = v.stride(1);
      p.dv = v.size(2);
    }
    p.n = q.size(0);
    p.heads = q.size(1);
    p.dk = q.size(2);
    p.cu_seqlens = seqs.i64();
    p.n_seqs = n_seqs;
    if (sparse.defined()) {
      p.sparse_idx = sparse.i32();
      p.topk = sparse.size(1);
    }
    p.scale = scale;
    const CudaAttention att = opt_.attention == CudaAttention::f32 && opt_.tf32_attention
                                  ? CudaAttention::tf32
                                  : opt_.attention;
    p.precision = att == CudaAttention::tf32   ? kernels::AttentionPrecision::tf32
                  : att == CudaAttention::bf16 ? kernels::AttentionPrecision::bf16
                                               : kernels::AttentionPrecision::f32;
    p.status = ctx_.status;
    p.op = op_id(op);
    return p;
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                         const std::vector<int64_t>& cu, float scale, Tensor& out, Tensor& lse,
                         const Tensor* sparse_idx) override {
    check_attention(q, k, v, cu, out, lse);
    Tensor sparse = sparse_on_device(sparse_idx, q.size(0));
    Tensor seqs = upload_seqs(cu);
    auto p = attention_params(q, k, v, seqs, int64_t(cu.size()) - 1, scale, sparse,
                              FaultOp::attention_forward);
    p.out = out.f32();
    p.o_sn = out.stride(0);
    p.o_sh = out.stride(1);
    p.lse = lse.f32();
    SHOAL_CUDA_CHECK(kernels::attention_forward_cuda(p, stream()));
  }

  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& dout, const Tensor& lse, const std::vector<int64_t>& cu,
                          float scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          const Tensor* sparse_idx) override {
    check_attention(q, k, v, cu, out, lse);
    check_attention(dq, dk, dv, cu, dout, lse);
    Tensor sparse = sparse_on_device(sparse_idx, q.size(0));
    Tensor seqs = upload_seqs(cu);
    auto p = attention_params(q, k, v, seqs, int64_t(cu.size()) - 1, scale, sparse,
                              FaultOp::attention_backward);
    p.out = out.f32();
    p.o_sn = out.stride(0);
    p.o_sh = out.stride(1);
    p.lse = lse.f32();
    p.dout = dout.f32();
    p.do_sn = dout.stride(0);
    p.do_sh = dout.stride(1);
    p.dq = dq.f32();
    p.dq_sn = dq.stride(0);
    p.dq_sh = dq.stride(1);
    p.dkk = dk.f32();
    p.dk_sn = dk.stride(0);
    p.dk_sh = dk.stride(1);
    p.dvv = dv.f32();
    p.dv_sn = dv.stride(0);
    p.dv_sh = dv.stride(1);
    Tensor drow;  // the tiled backward's scratch (freed in stream order after it)
    if (kernels::flash_attention_f32_supported(p)) {
      drow = empty({q.size(1), q.size(0)});
      p.drow = drow.f32();
    }
    SHOAL_CUDA_CHECK(kernels::attention_backward_cuda(p, stream()));
  }

  void attention_head_sum_probs(const Tensor& q, const Tensor& k, const Tensor& lse,
                                const std::vector<int64_t>& cu, float scale,
                                const Tensor* sparse_idx, Tensor& p) override {
    check_f32(q, "attention_head_sum_probs q");
    check_f32(k, "attention_head_sum_probs k");
    const int64_t n = q.size(0), heads = q.size(1), dk = q.size(2);
    SHOAL_CHECK(q.ndim() == 3 && k.ndim() == 3 && q.stride(2) == 1 && k.stride(2) == 1 &&
                    k.size(0) == n && k.size(1) == heads && k.size(2) == dk,
                "attention_head_sum_probs: q {} k {}", q.describe(), k.describe());
    check_contig_f32(lse, "attention_head_sum_probs lse");
    check_contig_f32(p, "attention_head_sum_probs p");
    check_cu(cu, n, "attention_head_sum_probs");
    SHOAL_CHECK(p.numel() == packed_square_size(cu),
                "attention_head_sum_probs: p holds {}, the batch needs {}", p.numel(),
                packed_square_size(cu));
    Tensor sparse = sparse_on_device(sparse_idx, n);
    Tensor seqs = upload_seqs(cu);
    const int64_t n_seqs = int64_t(cu.size()) - 1;
    auto ap = attention_params(q, k, Tensor(), seqs, n_seqs, scale, sparse,
                               FaultOp::attention_head_sum_probs);
    ap.lse = lse.f32();
    SHOAL_CUDA_CHECK(
        kernels::attention_head_sum_probs_cuda(ap, seqs.i64() + n_seqs + 1, p.f32(), stream()));
  }

  // ---------------------------------------------------------------- DSA indexer

  void check_indexer(const Tensor& q, const Tensor& k, const Tensor& w,
                     const std::vector<int64_t>& cu) {
    backend_checks::indexer(q, k, w, cu, Device::cuda);
    SHOAL_CHECK(q.size(2) <= kernels::kIndexerMaxHeadDim,
                "indexer: head dim {} exceeds the CUDA kernel's {}", q.size(2),
                kernels::kIndexerMaxHeadDim);
  }

  kernels::IndexerParams indexer_params(const Tensor& q, const Tensor& k, const Tensor& w,
                                        const Tensor& seqs, int64_t n_seqs, float scale) {
    kernels::IndexerParams p;
    p.q = q.f32();
    p.q_sn = q.stride(0);
    p.q_sh = q.stride(1);
    p.k = k.f32();
    p.k_s = row_stride(k);
    p.w = w.f32();
    p.w_s = row_stride(w);
    p.n = q.size(0);
    p.heads = q.size(1);
    p.dim = q.size(2);
    p.cu_seqlens = seqs.i64();
    p.sq_offsets = seqs.i64() + n_seqs + 1;
    p.n_seqs = n_seqs;
    p.scale = scale;
    return p;
  }

  void indexer_scores(const Tensor& q, const Tensor& k, const Tensor& w,
                      const std::vector<int64_t>& cu, float scale, Tensor& out) override {
    check_indexer(q, k, w, cu);
    check_contig_f32(out, "indexer scores");
    SHOAL_CHECK(out.numel() == packed_square_size(cu), "indexer scores: {} for {} packed",
                out.describe(), packed_square_size(cu));
    Tensor seqs = upload_seqs(cu);
    auto p = indexer_params(q, k, w, seqs, int64_t(cu.size()) - 1, scale);
    p.scores = out.f32();
    SHOAL_CUDA_CHECK(kernels::indexer_scores_cuda(p, stream()));
  }

  void indexer_scores_backward(const Tensor& q, const Tensor& k, const Tensor& w,
                               const std::vector<int64_t>& cu, float scale, const Tensor& dsc,
                               Tensor& dq, Tensor& dk, Tensor& dw) override {
    check_indexer(q, k, w, cu);
    check_indexer(dq, dk, dw, cu);
    check_contig_f32(dsc, "indexer dscores");
    SHOAL_CHECK(dsc.numel() == packed_square_size(cu), "indexer dscores size");
    Tensor seqs = upload_seqs(cu);
    auto p = indexer_params(q, k, w, seqs, int64_t(cu.size()) - 1, scale);
    p.dscores = dsc.f32();
    p.dq = dq.f32();
    p.dq_sn = dq.stride(0);
    p.dq_sh = dq.stride(1);
    p.dk = dk.f32();
    p.dk_s = row_stride(dk);
    p.dw = dw.f32();
    p.dw_s = row_stride(dw);
    SHOAL_CUDA_CHECK(kernels::indexer_scores_backward_cuda(p, stream()));
  }

  void topk_rows(const Tensor& sc, const std::vector<int64_t>& cu, int64_t k,
                 Tensor& idx) override {
    check_contig_f32(sc, "topk scores");
    check_dev(idx, "topk idx");
    SHOAL_CHECK(k >= 1, "topk_rows: k must be >= 1, got {}", k);
    SHOAL_CHECK(!cu.empty(), "topk_rows: empty cu_seqlens");
    check_cu(cu, cu.back(), "topk_rows");
    const int64_t n = cu.back();
    SHOAL_CHECK(sc.numel() == packed_square_size(cu) && idx.dtype() == DType::i32 &&
                    idx.numel() == n * k && idx.is_contiguous(),
                "topk_rows: scores {} idx {} for k {}", sc.describe(), idx.describe(), k);
    int64_t max_len = 0;
    for (size_t s = 0; s + 1 < cu.size(); ++s) max_len = std::max(max_len, cu[s + 1] - cu[s]);
    if (max_len == 0) return;
    // Each row is selected in its own slice of scratch: bound the scratch, take rows in chunks.
    constexpr int64_t kScratchItems = int64_t(1) << 24;  // 256 MiB of 16-byte items
    const int64_t items = std::min(max_len * max_len, std::max(kScratchItems, max_len));
    static_assert(sizeof(kernels::topk::Item) == 16, "topk item layout");
    Tensor scratch = empty({items * 2}, DType::f64);  // 16 bytes per item
    kernels::TopkParams p;
    p.scores = sc.f32();
    p.idx = idx.i32();
    p.k = k;
    p.scratch = scratch.raw();
    p.scratch_items = items;
    int64_t off = 0;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      const int64_t len = cu[s + 1] - cu[s];
      const int64_t rows_per_chunk = std::max<int64_t>(1, items / std::max<int64_t>(len, 1));
      for (int64_t r0 = 0; r0 < len; r0 += rows_per_chunk)
        SHOAL_CUDA_CHECK(kernels::topk_rows_cuda(p, cu[s], len, off, r0,
                                                 std::min(len, r0 + rows_per_chunk), stream()));
      off += len * len;
    }
  }

  double indexer_kl(const Tensor& p, const Tensor& sc, const std::vector<int64_t>& cu,
                    const Tensor* sparse_idx, float grad_scale, Tensor& dsc) override {
    check_contig_f32(p, "indexer_kl p");
    check_contig_f32(sc, "indexer_kl scores");
    check_contig_f32(dsc, "indexer_kl dscores");
    SHOAL_CHECK(!cu.empty(), "indexer_kl: empty cu_seqlens");
    check_cu(cu, cu.back(), "indexer_kl");
    const int64_t total = packed_square_size(cu), n = cu.back();
    SHOAL_CHECK(p.numel() == total && sc.numel() == total && dsc.numel() == total,
                "indexer_kl: p {} scores {} dscores {} for {} packed", p.describe(), sc.describe(),
                dsc.describe(), total);
    if (n == 0) return 0.0;
    Tensor sparse = sparse_on_device(sparse_idx, n);
    Tensor seqs = upload_seqs(cu);
    Tensor row_kl = empty({n}, DType::f64);
    kernels::IndexerKlParams kp;
    kp.p = p.f32();
    kp.scores = sc.f32();
    kp.dscores = dsc.f32();
    kp.row_kl = row_kl.f64();
    kp.n = n;
    kp.n_seqs = int64_t(cu.size()) - 1;
    kp.cu_seqlens = seqs.i64();
    kp.sq_offsets = seqs.i64() + kp.n_seqs + 1;
    if (sparse.defined()) {
      kp.sparse_idx = sparse.i32();
      kp.topk = sparse.size(1);
    }
    kp.grad_scale = grad_scale;
    kp.status = ctx_.status;
    kp.op = op_id(FaultOp::indexer_kl);
    SHOAL_CUDA_CHECK(kernels::indexer_kl_cuda(kp, stream()));
    Tensor h = to_host(row_kl);  // synchronises and checks faults
    double kl = 0;
    for (int64_t i = 0; i < n; ++i) kl += h.f64()[i];
    return kl;
  }

  void hadamard_fp8(Tensor& x, bool hadamard, bool fp8) override {
    check_rows(x, "hadamard_fp8");
    const int64_t d = x.size(1);
    SHOAL_CHECK(!hadamard || (d > 0 && (d & (d - 1)) == 0),
                "hadamard_fp8: the Hadamard transform needs a power-of-two width, got {}", d);
    SHOAL_CHECK(d <= 16384, "hadamard_fp8: width {} exceeds the CUDA kernel's 16384", d);
    const float norm = float(1.0 / std::sqrt(double(d)));
    SHOAL_CUDA_CHECK(kernels::hadamard_fp8_cuda(x.f32(), x.size(0), d, row_stride(x), hadamard, fp8,
                                                norm, stream()));
  }

  // ---------------------------------------------------------------- layernorm

  void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y,
                         Tensor& mean, Tensor& rstd) override {
    backend_checks::layernorm(x, w, b, y, mean, rstd, Device::cuda);
    const int64_t n = x.size(0), d = x.size(1);
    kernels::LayerNormParams p;
    p.x = x.f32();
    p.w = w.f32();
    p.b = b.f32();
    p.y = y.f32();
    p.mean = mean.f32();
    p.rstd = rstd.f32();
    p.rows = n;
    p.dim = d;
    p.x_stride = row_stride(x);
    p.y_stride = row_stride(y);
    p.eps = eps;
    SHOAL_CUDA_CHECK(kernels::layernorm_forward_cuda(p, stream()));
  }

  void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor& dw, Tensor& db) override {
    check_rows(dy, "layernorm dy");
    check_rows(x, "layernorm x");
    check_rows(dx, "layernorm dx");
    for (const Tensor* t : {&w, &mean, &rstd, (const Tensor*)&dw, (const Tensor*)&db})
      check_contig_f32(*t, "layernorm backward");
    const int64_t n = x.size(0), d = x.size(1);
    SHOAL_CHECK(
        dy.shape() == x.shape() && dx.shape() == x.shape() && dw.numel() == d && db.numel() == d,
        "layernorm backward shapes");
    if (n == 0 || d == 0) return;
    Tensor scratch = empty({2 * kernels::norm_dw_scratch_floats(n, d)});
    kernels::LayerNormParams p;
    p.dy = dy.f32();
    p.x = x.f32();
    p.w = w.f32();
    p.mean = mean.f32();
    p.rstd = rstd.f32();
    p.dx = dx.f32();
    p.dw = dw.f32();
    p.db = db.f32();
    p.scratch = scratch.f32();
    p.rows = n;
    p.dim = d;
    p.x_stride = row_stride(x);
    p.y_stride = row_stride(dy);
    p.dx_stride = row_stride(dx);
    SHOAL_CUDA_CHECK(kernels::layernorm_backward_cuda(p, stream()));
  }

  // ---------------------------------------------------------------- MLP

  void swiglu_forward(const Tensor& gu, Tensor& h) override {
    check_rows(gu, "swiglu gate_up");
    check_rows(h, "swiglu h");
    const int64_t n = gu.size(0), inter = h.size(1);
    SHOAL_CHECK(gu.size(1) == 2 * inter && h.size(0) == n, "swiglu shapes: {} -> {}", gu.describe(),
                h.describe());
    kernels::SwigluParams p;
    p.gate_up = gu.f32();
    p.h = h.f32();
    p.rows = n;
    p.inter = inter;
    p.gu_stride = row_stride(gu);
    p.h_stride = row_stride(h);
    SHOAL_CUDA_CHECK(kernels::swiglu_forward_cuda(p, stream()));
  }

  void swiglu_backward(const Tensor& dh, const Tensor& gu, Tensor& dgu) override {
    check_rows(dh, "swiglu dh");
    check_rows(gu, "swiglu gate_up");
    check_rows(dgu, "swiglu dgate_up");
    const int64_t n = gu.size(0), inter = dh.size(1);
    SHOAL_CHECK(gu.size(1) == 2 * inter && dgu.shape() == gu.shape() && dh.size(0) == n,
                "swiglu backward shapes");
    kernels::SwigluParams p;
    p.gate_up = gu.f32();
    p.dh = dh.f32();
    p.dgate_up = dgu.f32();
    p.rows = n;
    p.inter = inter;
    p.gu_stride = row_stride(gu);
    p.h_stride = row_stride(dh);
    p.dgu_stride = row_stride(dgu);
    SHOAL_CUDA_CHECK(kernels::swiglu_backward_cuda(p, stream()));
  }

  // ---------------------------------------------------------------- embedding and losses

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) override {
    check_rows(table, "embedding table");
    check_rows(out, "embedding out");
    SHOAL_CHECK(ids.dtype() == DType::i32 && ids.is_contiguous(),
                "embedding: ids must be contiguous i32, got {}", ids.describe());
    const int64_t n = ids.numel(), d = table.size(1);
    SHOAL_CHECK(out.size(0) == n && out.size(1) == d, "embedding out {}", out.describe());
    Tensor dids = on_device(ids, "embedding ids");
    kernels::RowOpParams p;
    p.src = table.f32();
    p.src_ld = row_stride(table);
    p.src_rows = table.size(0);
    p.dst = out.f32();
    p.dst_ld = row_stride(out);
    p.cols = d;
    p.idx = dids.i32();
    p.n_idx = n;
    p.status = ctx_.status;
    p.op = op_id(FaultOp::embedding_forward);
    SHOAL_CUDA_CHECK(kernels::gather_rows_cuda(p, stream()));
  }

  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) override {
    check_rows(dtable, "embedding dtable");
    check_rows(dout, "embedding dout");
    SHOAL_CHECK(ids.dtype() == DType::i32 && ids.is_contiguous(),
                "embedding backward: ids must be contiguous i32, got {}", ids.describe());
    const int64_t n = ids.numel();
    SHOAL_CHECK(dout.size(0) == n && dout.size(1) == dtable.size(1),
                "embedding backward: dout {} for {} ids into {}", dout.describe(), n,
                dtable.describe());
    Tensor dids = on_device(ids, "embedding ids");
    kernels::RowOpParams p;
    p.src = dout.f32();
    p.src_ld = row_stride(dout);
    p.dst = dtable.f32();
    p.dst_ld = row_stride(dtable);
    p.dst_rows = dtable.size(0);
    p.cols = dtable.size(1);
    p.idx = dids.i32();
    p.n_idx = n;
    p.status = ctx_.status;
    p.op = op_id(FaultOp::embedding_backward);
    SHOAL_CUDA_CHECK(kernels::scatter_add_rows_cuda(p, stream()));
  }

  kernels::LogitsParams logits_params(const Tensor& logits, const Tensor& labels, const char* what,
                                      Tensor& dlabels) {
    check_rows(logits, what);
    const int64_t n = logits.size(0);
    SHOAL_CHECK(labels.dtype() == DType::i32 && labels.numel() == n && labels.is_contiguous(),
                "{}: labels must be contiguous i32[{}], got {}", what, n, labels.describe());
    dlabels = on_device(labels, what);
    kernels::LogitsParams p;
    p.logits = logits.f32();
    p.rows = n;
    p.vocab = logits.size(1);
    p.ld = row_stride(logits);
    p.labels = dlabels.i32();
    p.status = ctx_.status;
    return p;
  }

  double cross_entropy(const Tensor& logits, const Tensor& labels, float grad_scale,
                       Tensor* dlogits) override {
    Tensor dlabels;
    auto p = logits_params(logits, labels, "cross_entropy", dlabels);
    p.op = op_id(FaultOp::cross_entropy);
    if (dlogits) {
      check_rows(*dlogits, "cross_entropy dlogits");
      SHOAL_CHECK(dlogits->shape() == logits.shape(), "cross_entropy: dlogits shape");
      p.dlogits = dlogits->f32();
      p.d_ld = row_stride(*dlogits);
    }
    if (p.rows == 0) return 0.0;
    Tensor row_loss = empty({p.rows}, DType::f64);
    SHOAL_CUDA_CHECK(kernels::cross_entropy_cuda(p, grad_scale, row_loss.f64(), stream()));
    Tensor h = to_host(row_loss);  // synchronises; a bad label throws here
    double total = 0;
    for (int64_t i = 0; i < p.rows; ++i) total += h.f64()[i];
    return total;
  }

  // Validates host token sets (as the CPU backend does, except the label check, which runs on the
  // device) and uploads them.
  void attach_sets(const TokenSets* sets, kernels::LogitsParams& p, Tensor& offsets, Tensor& ids) {
    if (!sets) return;
    const int64_t n = p.rows;
    SHOAL_CHECK(sets->offsets.dtype() == DType::i64 && sets->offsets.numel() == n + 1 &&
                    sets->ids.dtype() == DType::i32,
                "token_logprobs: sets need i64 offsets[{}] and i32 ids, got {} and {}", n + 1,
                sets->offsets.describe(), sets->ids.describe());
    Tensor ho =
        sets->offsets.device() == Device::cpu ? sets->offsets.contiguous() : to_host(sets->offsets);
    Tensor hi = sets->ids.device() == Device::cpu ? sets->ids.contiguous() : to_host(sets->ids);
    const int64_t* off = ho.i64();
    SHOAL_CHECK(off[0] == 0 && off[n] == hi.numel(),
                "token_logprobs: set offsets must run from 0 to {}", hi.numel());
    for (int64_t i = 0; i < n; ++i) {
      SHOAL_CHECK(off[i + 1] >= off[i], "token_logprobs: set offsets decrease at row {}", i);
      for (int64_t j = off[i]; j < off[i + 1]; ++j)
        SHOAL_CHECK(hi.i32()[j] >= 0 && hi.i32()[j] < p.vocab,
                    "token_logprobs: set id {} at row {} outside [0, {})", hi.i32()[j], i, p.vocab);
    }
    offsets = from_host(ho);
    ids = from_host(hi);
    p.set_offsets = offsets.i64();
    p.set_ids = ids.numel() ? ids.i32() : nullptr;
    if (!p.set_ids) {  // empty sets everywhere: every row must be ignored; keep a valid pointer
      ids = empty({1}, DType::i32);
      p.set_ids = ids.i32();
    }
  }

  void token_logprobs(const Tensor& logits, const Tensor& labels, const TokenSets* sets,
                      Tensor& logp, Tensor* entropy) override {
    Tensor dlabels, offsets, ids;
    auto p = logits_params(logits, labels, "token_logprobs", dlabels);
    p.op = op_id(FaultOp::token_logprobs);
    check_contig_f32(logp, "token_logprobs logp");
    SHOAL_CHECK(logp.numel() == p.rows && (!entropy || entropy->numel() == p.rows),
                "token_logprobs: outputs must hold {} rows", p.rows);
    if (entropy) check_contig_f32(*entropy, "token_logprobs entropy");
    attach_sets(sets, p, offsets, ids);
    SHOAL_CUDA_CHECK(
        kernels::token_logprobs_cuda(p, logp.f32(), entropy ? entropy->f32() : nullptr, stream()));
  }

  void token_logprobs_backward(const Tensor& logits, const Tensor& labels, const TokenSets* sets,
                               const Tensor& dlogp, Tensor& dlogits) override {
    Tensor dlabels, offsets, ids;
    auto p = logits_params(logits, labels, "token_logprobs_backward", dlabels);
    p.op = op_id(FaultOp::token_logprobs_backward);
    check_contig_f32(dlogp, "token_logprobs_backward dlogp");
    check_rows(dlogits, "token_logprobs_backward dlogits");
    SHOAL_CHECK(dlogp.numel() == p.rows && dlogits.shape() == logits.shape(),
                "token_logprobs_backward shapes");
    p.dlogits = dlogits.f32();
    p.d_ld = row_stride(dlogits);
    attach_sets(sets, p, offsets, ids);
    Tensor scratch;
    if (sets) {
      scratch = empty({std::max<int64_t>(1, ids.numel())});
      p.set_scratch = scratch.f32();
    }
    SHOAL_CUDA_CHECK(kernels::token_logprobs_backward_cuda(p, dlogp.f32(), stream()));
  }

  // ---------------------------------------------------------------- mixture of experts

  void route_noaux_tc(const Tensor& logits, const Tensor& bias, const RouterParams& rp,
                      Tensor& scores, Tensor& topk_idx, Tensor& topk_w,
                      bool use_given_idx) override {
    check_contig_f32(logits, "router logits");
    check_contig_f32(bias, "router bias");
    check_contig_f32(scores, "router scores");
    check_contig_f32(topk_w, "router weights");
    check_dev(topk_idx, "router topk_idx");
    const int64_t n = logits.size(0), e = rp.n_experts, kk = rp.top_k;
    SHOAL_CHECK(logits.ndim() == 2 && logits.size(1) == e && bias.numel() == e &&
                    scores.shape() == logits.shape(),
                "router shapes: logits {} bias {} scores {}", logits.describe(), bias.describe(),
                scores.describe());
    SHOAL_CHECK(topk_idx.dtype() == DType::i32 && topk_idx.numel() == n * kk &&
                    topk_w.numel() == n * kk && topk_idx.is_contiguous(),
                "router outputs: idx {} w {}", topk_idx.describe(), topk_w.describe());
    SHOAL_CHECK(rp.n_group > 0 && e % rp.n_group == 0 && e / rp.n_group >= 2 &&
                    rp.topk_group >= 1 && rp.topk_group <= rp.n_group && kk >= 1 &&
                    kk <= rp.topk_group * (e / rp.n_group),
                "router parameters: {} experts, {} groups, top {} groups, top {}", e, rp.n_group,
                rp.topk_group, kk);
    SHOAL_CHECK(rp.n_group <= kernels::kRouterMaxGroups,
                "router: {} groups exceed the CUDA kernel's {}", rp.n_group,
                kernels::kRouterMaxGroups);
    kernels::RouterKernelParams p = router_params(rp, n);
    p.logits = logits.f32();
    p.bias = bias.f32();
    p.scores = scores.f32();
    p.topk_idx = topk_idx.i32();
    p.topk_w = topk_w.f32();
    p.use_given_idx = use_given_idx;
    p.op = op_id(FaultOp::route_noaux_tc);
    SHOAL_CUDA_CHECK(kernels::route_noaux_tc_cuda(p, stream()));
  }

  kernels::RouterKernelParams router_params(const RouterParams& rp, int64_t n) {
    kernels::RouterKernelParams p;
    p.n = n;
    p.experts = rp.n_experts;
    p.top_k = rp.top_k;
    p.n_group = rp.n_group;
    p.topk_group = rp.topk_group;
    p.norm_topk_prob = rp.norm_topk_prob;
    p.routed_scaling_factor = rp.routed_scaling_factor;
    p.status = ctx_.status;
    return p;
  }

  void route_backward(const Tensor& dw, const Tensor& scores, const Tensor& topk_idx,
                      const RouterParams& rp, Tensor& dlogits) override {
    check_contig_f32(dw, "router dweights");
    check_contig_f32(scores, "router scores");
    check_contig_f32(dlogits, "router dlogits");
    const int64_t n = scores.size(0), kk = rp.top_k;
    SHOAL_CHECK(dlogits.shape() == scores.shape() && dw.numel() == n * kk &&
                    topk_idx.numel() == n * kk && scores.ndim() == 2 &&
                    scores.size(1) == rp.n_experts && topk_idx.dtype() == DType::i32 &&
                    topk_idx.is_contiguous(),
                "router backward shapes");
    Tensor idx = on_device(topk_idx, "router backward idx");
    kernels::RouterKernelParams p = router_params(rp, n);
    p.scores = scores.f32();
    p.topk_idx = idx.i32();
    p.dtopk_w = dw.f32();
    p.dlogits = dlogits.f32();
    p.op = op_id(FaultOp::route_backward);
    SHOAL_CUDA_CHECK(kernels::route_backward_cuda(p, stream()));
  }

  void moe_sort(const Tensor& topk_idx, int64_t n_experts, Tensor& order,
                std::vector<int64_t>& counts) override {
    Tensor dcounts = launch_moe_sort(topk_idx, n_experts, order, nullptr, "moe_sort");
    Tensor h = to_host(dcounts);  // synchronises; a bad expert id throws here
    counts.assign(h.i64(), h.i64() + n_experts);
  }

  // The sort's kernels (kernels/moe/moe.h), on the device, nothing read back: with offsets, the
  // tokens per expert as i32 prefix sums there; without, returned as i64 counts [n_experts].
  Tensor launch_moe_sort(const Tensor& topk_idx, int64_t n_experts, Tensor& order, int32_t* offsets,
                         const std::string& what) {
    check_dev(order, (what + " order").c_str());
    SHOAL_CHECK(topk_idx.dtype() == DType::i32 && topk_idx.is_contiguous() &&
                    order.dtype() == DType::i32 && order.numel() == topk_idx.numel() &&
                    order.is_contiguous() && n_experts >= 1,
                "{}: idx {} order {}", what, topk_idx.describe(), order.describe());
    SHOAL_CHECK(n_experts <= 6144, "{}: {} experts exceed the CUDA kernel's 6144", what, n_experts);
    SHOAL_CHECK(topk_idx.numel() <= INT32_MAX, "{}: {} assignments exceed int32", what,
                topk_idx.numel());
    Tensor idx = on_device(topk_idx, (what + " idx").c_str());
    const int64_t m = idx.numel();
    Tensor hist = empty({kernels::moe_sort_chunks(m) * n_experts}, DType::i32);
    Tensor counts = offsets ? Tensor() : empty({n_experts}, DType::i64);
    kernels::MoeSortParams p;
    p.topk_idx = m ? idx.i32() : nullptr;
    p.m = m;
    p.experts = n_experts;
    p.order = m ? order.i32() : nullptr;
    p.chunk_hist = hist.i32();
    p.counts = offsets ? nullptr : counts.i64();
    p.offsets = offsets;
    p.status = ctx_.status;
    p.op = op_id(FaultOp::moe_sort);
    SHOAL_CUDA_CHECK(kernels::moe_sort_cuda(p, stream()));
    return counts;
  }

  // moe_sort's kernels with the counts' prefix sums written on the device and nothing read back.
  void moe_sort_offsets(const Tensor& topk_idx, int64_t n_experts, Tensor& order,
                        Tensor& offsets) override {
    backend_checks::moe_offsets(offsets, n_experts, Device::cuda);
    launch_moe_sort(topk_idx, n_experts, order, offsets.i32(), "moe_sort_offsets");
  }

  // The grouped GEMMs with device offsets run on the device in bf16 mode (unless the options turn
  // that off); in the f32 and tf32 modes they are the reference (host offsets, grouped_matmul),
  // which synchronises.
  bool device_grouped_gemms() const override {
    return opt_.gemm == CudaGemm::bf16 && opt_.device_grouped_gemms;
  }

  // Decode-sized groups (at most kDecodeRowsPerGroup rows per group on average, known on the host
  // from the shapes) take kernels/moe/grouped_gemm.cu (the product transposed, 8/16/32-row tiles,
  // operands loaded straight into registers, k split within a block for small batches), larger
  // ones kernels/moe/expert_gemm.cu's 128 x 128 tiles; both over a grid bounded on the host, the
  // activation rounded as it is loaded, the weight's kept bf16 copy read in place.
  static constexpr int64_t kDecodeRowsPerGroup = 64;
  void grouped_matmul_dev(const Tensor& a, const Tensor& b, Tensor& c,
                          const Tensor& offsets) override {
    const auto g = backend_checks::grouped_matmul_dev(a, b, c, offsets, Device::cuda);
    if (!device_grouped_gemms()) {
      Backend::grouped_matmul_dev(a, b, c, offsets);
      return;
    }
    if (g.rows == 0 || g.n == 0) return;
    if (g.k == 0) {  // every row is in a group (valid offsets), and an empty sum is 0
      zero(c);
      return;
    }
    const Bf16Operand b16 = bf16_operand(b);
    if (g.rows > kDecodeRowsPerGroup * g.groups) {
      run_expert_gemm(kernels::ExpertGemmLayout::nt, a, c, offsets, g, 1.0f, 0.0f, b16.ptr,
                      b16.row_stride, b16.matrix_stride);
      return;
    }
    kernels::GroupedGemmParams p;
    p.a = a.f32();
    p.lda = row_stride(a);
    p.b = b16.ptr;
    p.ldb = b16.row_stride;
    p.b_stride = b16.matrix_stride;
    p.c = c.f32();
    p.ldc = row_stride(c);
    p.offsets = offsets.i32();
    p.rows = g.rows;
    p.n = g.n;
    p.k = g.k;
    p.groups = g.groups;
    p.status = ctx_.status;
    p.op = op_id(FaultOp::grouped_matmul_dev);
    SHOAL_CUDA_CHECK(kernels::grouped_gemm_bf16_cuda(p, stream()));
  }

  void grouped_matmul_dev_nn(const Tensor& a, const Tensor& b, Tensor& c,
                             const Tensor& offsets) override {
    const auto g = backend_checks::grouped_matmul_dev(a, b, c, offsets, Device::cuda,
                                                      backend_checks::DevLayout::nn);
    if (!device_grouped_gemms()) {
      Backend::grouped_matmul_dev_nn(a, b, c, offsets);
      return;
    }
    if (g.rows == 0 || g.n == 0) return;
    if (g.k == 0) {
      zero(c);
      return;
    }
    const Bf16Operand b16 = bf16_operand(b);
    run_expert_gemm(kernels::ExpertGemmLayout::nn, a, c, offsets, g, 1.0f, 0.0f, b16.ptr,
                    b16.row_stride, b16.matrix_stride);
  }

  // Both operands are activations (f32, rounded in the kernel); c is the gradient, f32.
  void grouped_matmul_dev_tn(const Tensor& a, const Tensor& b, Tensor& c, const Tensor& offsets,
                             float alpha, float beta) override {
    const auto g = backend_checks::grouped_matmul_dev(a, b, c, offsets, Device::cuda,
                                                      backend_checks::DevLayout::tn);
    if (!device_grouped_gemms()) {
      Backend::grouped_matmul_dev_tn(a, b, c, offsets, alpha, beta);
      return;
    }
    if (g.groups == 0 || g.n == 0 || g.k == 0) return;
    run_expert_gemm(kernels::ExpertGemmLayout::tn, a, c, offsets, g, alpha, beta, nullptr, 0, 0,
                    &b);
  }

  // One launch of kernels/moe/expert_gemm.cu. b16 (row stride ldb16, matrix stride b16_stride):
  // the weight's bf16 copy (nt, nn); b_f32: tn's second activation.
  void run_expert_gemm(kernels::ExpertGemmLayout layout, const Tensor& a, Tensor& c,
                       const Tensor& offsets, const backend_checks::DevGroupedGemm& g, float alpha,
                       float beta, const uint16_t* b16, int64_t ldb16, int64_t b16_stride,
                       const Tensor* b_f32 = nullptr) {
    const bool tn = layout == kernels::ExpertGemmLayout::tn;
    kernels::ExpertGemmParams p;
    p.layout = layout;
    p.a = g.rows > 0 ? a.f32() : nullptr;
    p.lda = row_stride(a);
    if (tn) {
      p.b_f32 = g.rows > 0 ? b_f32->f32() : nullptr;
      p.ldb = row_stride(*b_f32);
      p.ldc = backend_checks::matrix_row_stride(c);
      p.c_stride = c.stride(0);
    } else {
      p.b = b16;
      p.ldb = ldb16;
      p.b_stride = b16_stride;
      p.ldc = row_stride(c);
    }
    p.c = c.f32();
    p.offsets = offsets.i32();
    p.rows = g.rows;
    p.n = g.n;
    p.k = g.k;
    p.groups = g.groups;
    p.alpha = alpha;
    p.beta = beta;
    p.status = ctx_.status;
    p.op = op_id(FaultOp::grouped_matmul_dev);
    const int64_t counters = kernels::expert_gemm_workspace(p);
    Tensor workspace;  // freed stream-ordered after the launch
    if (counters > 0) {
      workspace = empty({counters}, DType::i32);
      p.workspace = workspace.i32();
    }
    SHOAL_CUDA_CHECK(kernels::expert_gemm_bf16_cuda(p, stream()));
  }

  void add_group_sizes(const Tensor& offsets, Tensor& counts) override {
    backend_checks::add_group_sizes(offsets, counts, Device::cuda);
    SHOAL_CUDA_CHECK(
        kernels::add_group_sizes_cuda(offsets.i32(), counts.numel(), counts.i64(), stream()));
  }

  void gather_rows(const Tensor& src, const Tensor& idx, int64_t div, Tensor& dst) override {
    check_rows(src, "gather src");
    check_rows(dst, "gather dst");
    SHOAL_CHECK(idx.dtype() == DType::i32 && idx.is_contiguous() && idx.numel() == dst.size(0) &&
                    dst.size(1) == src.size(1) && div >= 1,
                "gather_rows: src {} idx {} dst {}", src.describe(), idx.describe(),
                dst.describe());
    Tensor di = on_device(idx, "gather_rows idx");
    kernels::RowOpParams p;
    p.src = src.f32();
    p.src_ld = row_stride(src);
    p.src_rows = src.size(0);
    p.dst = dst.f32();
    p.dst_ld = row_stride(dst);
    p.cols = src.size(1);
    p.idx = di.numel() ? di.i32() : nullptr;
    p.n_idx = di.numel();
    p.div = div;
    p.status = ctx_.status;
    p.op = op_id(FaultOp::gather_rows);
    SHOAL_CUDA_CHECK(kernels::gather_rows_cuda(p, stream()));
  }

  // The checks and kernel parameters scatter_add_rows and combine_rows share: row i of src goes to
  // row idx[i] / div of dst, times w[idx[i]] when w is given. di receives idx on the device; the
  // caller keeps it until the launch.
  kernels::RowOpParams scatter_params(const Tensor& src, const Tensor& idx, int64_t div,
                                      const Tensor* w, Tensor& dst, const char* what, Tensor& di) {
    check_rows(src, what);
    check_rows(dst, what);
    SHOAL_CHECK(idx.dtype() == DType::i32 && idx.is_contiguous() && idx.numel() == src.size(0) &&
                    dst.size(1) == src.size(1) && div >= 1,
                "{}: src {} idx {} dst {}", what, src.describe(), idx.describe(), dst.describe());
    if (w) check_contig_f32(*w, what);
    di = on_device(idx, what);
    kernels::RowOpParams p;
    p.src = src.f32();
    p.src_ld = row_stride(src);
    p.dst = dst.f32();
    p.dst_ld = row_stride(dst);
    p.dst_rows = dst.size(0);
    p.cols = src.size(1);
    p.idx = di.numel() ? di.i32() : nullptr;
    p.n_idx = di.numel();
    p.div = div;
    p.w = w ? w->f32() : nullptr;
    p.w_count = w ? w->numel() : 0;
    p.status = ctx_.status;
    p.op = op_id(FaultOp::scatter_add_rows);
    return p;
  }
  void combine_rows(const Tensor& src, const Tensor& idx, int64_t div, const Tensor* w,
                    bool accumulate, Tensor& dst) override {
    SHOAL_CHECK(src.ndim() == 2 && dst.ndim() == 2 && src.size(0) == dst.size(0) * div &&
                    (!w || w->numel() == src.size(0)),
                "combine_rows: src {} dst {} div {} weights {}", src.describe(), dst.describe(),
                div, w ? w->numel() : 0);
    if (div > kernels::kCombineMaxDiv) {  // the reference: atomics, order not fixed
      Backend::combine_rows(src, idx, div, w, accumulate, dst);
      return;
    }
    Tensor di;
    const kernels::RowOpParams p = scatter_params(src, idx, div, w, dst, "combine_rows", di);
    Tensor inv = empty({std::max<int64_t>(1, di.numel())}, DType::i32);
    SHOAL_CUDA_CHECK(kernels::combine_rows_cuda(p, inv.i32(), accumulate, stream()));
  }
  void scatter_add_rows(const Tensor& src, const Tensor& idx, int64_t div, const Tensor* w,
                        Tensor& dst) override {
    Tensor di;
    const kernels::RowOpParams p = scatter_params(src, idx, div, w, dst, "scatter_add_rows", di);
    SHOAL_CUDA_CHECK(kernels::scatter_add_rows_cuda(p, stream()));
  }

  void row_dot_scatter(const Tensor& a, const Tensor& b, const Tensor& idx, Tensor& out) override {
    check_rows(a, "row_dot a");
    check_rows(b, "row_dot b");
    check_contig_f32(out, "row_dot out");
    SHOAL_CHECK(a.shape() == b.shape() && idx.numel() == a.size(0) && idx.dtype() == DType::i32 &&
                    idx.is_contiguous(),
                "row_dot_scatter shapes");
    Tensor di = on_device(idx, "row_dot_scatter idx");
    kernels::RowOpParams p;
    p.src = a.f32();
    p.src_ld = row_stride(a);
    p.dst = b.f32();
    p.dst_ld = row_stride(b);
    p.cols = a.size(1);
    p.idx = di.numel() ? di.i32() : nullptr;
    p.n_idx = di.numel();
    p.status = ctx_.status;
    p.op = op_id(FaultOp::row_dot_scatter);
    SHOAL_CUDA_CHECK(kernels::row_dot_scatter_cuda(p, out.f32(), out.numel(), stream()));
  }

  void scale_rows(Tensor& x, const Tensor& idx, const Tensor& w) override {
    check_rows(x, "scale_rows x");
    check_contig_f32(w, "scale_rows w");
    SHOAL_CHECK(idx.numel() == x.size(0) && idx.dtype() == DType::i32 && idx.is_contiguous(),
                "scale_rows: idx {} for {} rows", idx.describe(), x.size(0));
    Tensor di = on_device(idx, "scale_rows idx");
    kernels::RowOpParams p;
    p.dst = x.f32();
    p.dst_ld = row_stride(x);
    p.cols = x.size(1);
    p.idx = di.numel() ? di.i32() : nullptr;
    p.n_idx = di.numel();
    p.w = w.f32();
    p.w_count = w.numel();
    p.status = ctx_.status;
    p.op = op_id(FaultOp::scale_rows);
    SHOAL_CUDA_CHECK(kernels::scale_rows_cuda(p, stream()));
  }

  // ---------------------------------------------------------------- latent KV cache

  void scatter_rows(const Tensor& src, const Tensor& idx, Tensor& dst) override {
    backend_checks::scatter_rows(src, idx, dst, Device::cuda);
    Tensor di = on_device(idx, "scatter_rows idx");
    kernels::RowOpParams p;
    p.src = src.f32();
    p.src_ld = row_stride(src);
    p.dst = dst.f32();
    p.dst_ld = row_stride(dst);
    p.dst_rows = dst.size(0);
    p.cols = src.size(1);
    p.idx = di.numel() ? di.i32() : nullptr;
    p.n_idx = di.numel();
    p.status = ctx_.status;
    p.op = op_id(FaultOp::scatter_rows);
    SHOAL_CUDA_CHECK(kernels::scatter_rows_cuda(p, stream()));
  }

  void latent_attention(const Tensor& q, const Tensor& pool, int64_t page_tokens,
                        const Tensor& block_table, const Tensor& row_seq, const Tensor& row_len,
                        int64_t max_len, const Tensor* key_idx, float scale, Tensor& out) override {
    backend_checks::latent_attention(q, pool, page_tokens, block_table, row_seq, row_len, key_idx,
                                     out, Device::cuda);
    const int64_t dim = q.size(2), rank = out.size(2);
    SHOAL_CHECK(kernels::latent_attention_supported(dim, rank),
                "latent_attention: the CUDA kernel takes latent rank <= 512 and dim <= 1024, both "
                "multiples of 4; got rank {} dim {}",
                rank, dim);
    SHOAL_CHECK(q.stride(0) % 4 == 0 && q.stride(1) % 4 == 0 && out.stride(0) % 4 == 0 &&
                    out.stride(1) % 4 == 0,
                "latent_attention: q {} / out {} strides must be multiples of 4", q.describe(),
                out.describe());
    Tensor bt = on_device(block_table, "latent_attention block_table");
    Tensor rs = on_device(row_seq, "latent_attention row_seq");
    Tensor rl = on_device(row_len, "latent_attention row_len");
    Tensor ki = key_idx ? on_device(*key_idx, "latent_attention key_idx") : Tensor();
    kernels::LatentAttentionParams p;
    p.q = q.f32();
    p.q_sn = q.stride(0);
    p.q_sh = q.stride(1);
    p.pool = pool.f32();
    p.slots = pool.size(0);
    p.block_table = bt.i32();
    p.n_seqs = bt.size(0);
    p.max_pages = bt.size(1);
    p.page_tokens = page_tokens;
    p.row_seq = rs.i32();
    p.row_len = rl.i32();
    p.key_idx = key_idx ? ki.i32() : nullptr;
    p.topk = key_idx ? ki.size(1) : 0;
    p.max_len = max_len;
    p.out = out.f32();
    p.o_sn = out.stride(0);
    p.o_sh = out.stride(1);
    p.n = q.size(0);
    p.heads = q.size(1);
    p.dim = dim;
    p.rank = rank;
    p.scale = scale;
    // The attention precision the backend was opened with: reduced (tf32 or bf16) takes one TF32
    // MMA per product on the decode path, f32 keeps 3xTF32.
    p.tf32 = opt_.attention != CudaAttention::f32 || opt_.tf32_attention;
    p.status = ctx_.status;
    p.op = op_id(FaultOp::latent_attention);
    if (p.n == 0 || p.heads == 0) return;
    SHOAL_CHECK(p.n_seqs > 0 && p.max_pages > 0, "latent_attention: empty block table {}",
                bt.describe());
    Tensor work;
    const int64_t need = kernels::latent_attention_plan(p);
    if (need > 0) {
      work = empty({need});
      p.work = work.f32();
    }
    SHOAL_CUDA_CHECK(kernels::latent_attention_cuda(p, stream()));
  }

  // ---------------------------------------------------------------- recording

  // Stream capture on the backend's stream (thread-local mode: other threads' CUDA calls do not
  // spoil it). A call in the body that cannot be captured (a synchronisation, a copy to the host
  // or from pageable memory) invalidates the capture, so its error ends the recording, and the
  // capture's own end reports it; an error of the body's own (bad input) is rethrown.
  std::unique_ptr<OpGraph> record(const std::function<void()>& body, std::string& why) override {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    SHOAL_CUDA_CHECK(cudaStreamIsCapturing(stream(), &status));
    if (status != cudaStreamCaptureStatusNone) {
      why = "the stream is already being recorded";
      return nullptr;
    }
    cuda::synchronize_and_check(ctx_);  // faults of earlier work are not the recording's
    ctx_.allocator->begin_recording();
    const cudaError_t begun = cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal);
    if (begun != cudaSuccess) {
      ctx_.allocator->end_recording();
      cudaGetLastError();
      why = fmt::format("cudaStreamBeginCapture: {}", cudaGetErrorString(begun));
      return nullptr;
    }
    std::exception_ptr failure;
    std::string failure_text;
    try {
      body();
    } catch (const std::exception& e) {
      failure = std::current_exception();
      failure_text = e.what();
    } catch (...) {
      failure = std::current_exception();
      failure_text = "an exception that is not std::exception";
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream(), &graph);
    const cuda::CudaAllocator::RecordingCheck mem = ctx_.allocator->end_recording();
    if (ended != cudaSuccess) cudaGetLastError();
    auto drop = [&] {
      if (graph && cudaGraphDestroy(graph) != cudaSuccess) cudaGetLastError();
    };
    if (ended != cudaSuccess || graph == nullptr) {  // something in the body cannot be captured
      drop();
      why = fmt::format("{} ({})", cudaGetErrorString(ended),
                        failure_text.empty() ? "no error in the body" : failure_text);
      return nullptr;
    }
    if (failure) {
      drop();
      std::rethrow_exception(failure);
    }
    if (mem.left_alive > 0 || mem.foreign_frees > 0) {
      drop();
      SHOAL_FAIL(
          "Backend::record: the body left {} allocation(s) alive and freed {} allocated before "
          "it; a recorded body must free what it allocates and nothing else (backend.h)",
          mem.left_alive, mem.foreign_frees);
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiateWithFlags(&exec, graph, 0);
    drop();
    if (inst != cudaSuccess) {
      cudaGetLastError();
      why = fmt::format("cudaGraphInstantiate: {}", cudaGetErrorString(inst));
      return nullptr;
    }
    return std::make_unique<CudaOpGraph>(exec, stream(), ctx_.device);
  }

  // ---------------------------------------------------------------- sampling

  void sample_rows(const Tensor& logits, const std::vector<TokenDraw>& draws,
                   std::vector<int32_t>& ids, std::vector<float>& logprobs) override {
    backend_checks::sample_rows(logits, draws, Device::cuda);
    const int64_t n = int64_t(draws.size()), v = logits.size(1);
    ids.assign(draws.size(), 0);
    logprobs.assign(draws.size(), 0.0f);
    if (n == 0) return;
    // The draws go up in one copy, ids and log-probs come back in one (8 bytes a draw).
    const int64_t sz = int64_t(sizeof(kernels::SampleDraw));
    Tensor hd = Tensor::empty({n * sz}, DType::u8);
    for (int64_t i = 0; i < n; ++i) {
      const kernels::SampleDraw k = backend_checks::sample_draw(draws[size_t(i)], v);
      std::memcpy(static_cast<char*>(hd.raw()) + i * sz, &k, size_t(sz));
    }
    Tensor dd = from_host(hd);
    Tensor out = empty({2 * n}, DType::i32);
    kernels::SampleRowsParams p;
    p.logits = logits.f32();
    p.ld = row_stride(logits);
    p.vocab = v;
    p.draws = static_cast<const kernels::SampleDraw*>(dd.raw());
    p.n = n;
    p.ids = out.i32();
    p.logprobs = reinterpret_cast<float*>(out.i32() + n);
    SHOAL_CUDA_CHECK(kernels::sample_rows_cuda(p, stream()));
    Tensor h = to_host(out);  // synchronises
    std::copy_n(h.i32(), n, ids.data());
    std::memcpy(logprobs.data(), h.i32() + n, size_t(n) * 4);
  }

  // ---------------------------------------------------------------- optimizer

  void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
             const AdamWParams& ap) override {
    for (const Tensor* t : {(const Tensor*)&param, &grad, (const Tensor*)&m, (const Tensor*)&v})
      check_contig_f32(*t, "adamw");
    SHOAL_CHECK(
        param.shape() == grad.shape() && m.shape() == grad.shape() && v.shape() == grad.shape(),
        "adamw: shapes differ ({})", param.describe());
    SHOAL_CHECK(ap.step >= 1, "adamw: step must be >= 1");
    // The scalars exactly as the CPU backend computes them.
    const float bc1 = float(1.0 - std::pow(double(ap.beta1), double(ap.step)));
    const float bc2 = float(1.0 - std::pow(double(ap.beta2), double(ap.step)));
    kernels::AdamWKernelParams p;
    p.param = param.f32();
    p.grad = grad.f32();
    p.m = m.f32();
    p.v = v.f32();
    p.n = param.numel();
    p.beta1 = ap.beta1;
    p.beta2 = ap.beta2;
    p.eps = ap.eps;
    p.decay = 1.0f - ap.lr * ap.weight_decay;
    p.step = ap.lr / bc1;
    p.inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
    SHOAL_CUDA_CHECK(kernels::adamw_cuda(p, stream()));
  }

  void grad_clip_factor(const std::vector<Tensor>& grads, double max_norm, Tensor& clip) override {
    check_clip(clip, "grad_clip_factor");
    std::vector<kernels::AdamWTensorPtrs> rows;
    for (const Tensor& g : grads) {
      check_contig_f32(g, "grad_clip_factor");
      kernels::AdamWTensorPtrs r;
      r.grad = g.numel() ? g.f32() : nullptr;
      r.n = g.numel();
      rows.push_back(r);
    }
    Tensor table;
    kernels::AdamWMultiParams p = tensor_table(rows, table);
    Tensor partials = empty({std::max<int64_t>(p.chunks, 1)}, DType::f64);
    SHOAL_CUDA_CHECK(kernels::grad_clip_cuda(p, max_norm, partials.f64(), clip.f64(), stream()));
  }

  // One launch for all parameters. A parameter whose bf16 copy (bf16_operand) is current gets the
  // copy rewritten in the same pass and stays current; any other copy stays stale (its storage's
  // version moves when the pointers are taken) and is rebuilt at its next use.
  void adamw_multi(const std::vector<AdamWTensor>& ts, const AdamWParams& ap,
                   const Tensor* clip) override {
    SHOAL_CHECK(ap.step >= 1, "adamw: step must be >= 1");
    if (clip) check_clip(*clip, "adamw_multi");
    // Which copies are current, decided for every storage before any pointer is taken (taking
    // one moves the version): those get rewritten, the others stay stale.
    std::vector<std::pair<Storage*, uint16_t*>> current;
    for (const AdamWTensor& t : ts) {
      for (const Tensor* x : {&t.param, &t.grad, &t.m, &t.v}) check_contig_f32(*x, "adamw_multi");
      SHOAL_CHECK(t.param.shape() == t.grad.shape() && t.m.shape() == t.grad.shape() &&
                      t.v.shape() == t.grad.shape(),
                  "adamw_multi: shapes differ ({})", t.param.describe());
      Storage* st = t.param.storage();
      if (std::any_of(current.begin(), current.end(), [&](auto& c) { return c.first == st; }))
        continue;
      const bool fresh = st->derived && st->derived_version == st->version.load();
      current.emplace_back(
          st,
          fresh ? static_cast<uint16_t*>(static_cast<Tensor*>(st->derived.get())->raw()) : nullptr);
    }
    std::vector<kernels::AdamWTensorPtrs> rows;
    for (const AdamWTensor& t : ts) {
      if (t.param.numel() == 0) continue;
      kernels::AdamWTensorPtrs r;
      r.param = t.param.f32();
      r.grad = t.grad.f32();
      r.m = t.m.f32();
      r.v = t.v.f32();
      r.n = t.param.numel();
      r.decay = 1.0f - ap.lr * t.weight_decay;
      Storage* st = t.param.storage();
      for (auto& [c, copy] : current)
        if (c == st && copy) r.shadow = copy + t.param.offset();
      rows.push_back(r);
    }
    Tensor table;
    kernels::AdamWMultiParams p = tensor_table(rows, table);
    // The scalars exactly as the CPU backend computes them.
    const float bc1 = float(1.0 - std::pow(double(ap.beta1), double(ap.step)));
    const float bc2 = float(1.0 - std::pow(double(ap.beta2), double(ap.step)));
    p.beta1 = ap.beta1;
    p.beta2 = ap.beta2;
    p.eps = ap.eps;
    p.step = ap.lr / bc1;
    p.inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
    p.clip = clip ? clip->f64() : nullptr;
    SHOAL_CUDA_CHECK(kernels::adamw_multi_cuda(p, stream()));
    for (auto& [st, copy] : current)
      if (copy) st->derived_version = st->version.load();
  }

 private:
  cudaStream_t stream() const { return ctx_.stream; }

  struct GemmDims {
    int64_t m, n, k;
  };
  static GemmDims gemm_dims(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c) {
    const int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1);
    const int64_t kb = tb ? b.size(1) : b.size(0), n = tb ? b.size(0) : b.size(1);
    SHOAL_CHECK(k == kb && c.size(0) == m && c.size(1) == n, "matmul shapes: {}{} x {}{} -> {}",
                a.describe(), ta ? "^T" : "", b.describe(), tb ? "^T" : "", c.describe());
    SHOAL_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX, "matmul: dims exceed int32");
    return {m, n, k};
  }

  static void check_clip(const Tensor& clip, const char* what) {
    SHOAL_CHECK(clip.defined() && clip.device() == Device::cuda && clip.dtype() == DType::f64 &&
                    clip.numel() == 2 && clip.is_contiguous(),
                "{}: clip must be a contiguous f64[2] device tensor, got {}", what,
                clip.defined() ? clip.describe() : "undefined");
  }

  // The multi-tensor kernels' table on the device (one upload): the rows, then each row's first
  // chunk. `hold` keeps it alive (stream-ordered) until the caller's launch is enqueued.
  kernels::AdamWMultiParams tensor_table(const std::vector<kernels::AdamWTensorPtrs>& rows,
                                         Tensor& hold) {
    const size_t nr = rows.size(), row_bytes = nr * sizeof(kernels::AdamWTensorPtrs);
    Tensor h = Tensor::empty({int64_t(row_bytes + (nr + 1) * sizeof(int64_t))}, DType::u8);
    std::memcpy(h.raw(), rows.data(), row_bytes);
    auto* start = reinterpret_cast<int64_t*>(static_cast<char*>(h.raw()) + row_bytes);
    start[0] = 0;
    for (size_t i = 0; i < nr; ++i)
      start[i + 1] = start[i] + (rows[i].n + kernels::kAdamWChunk - 1) / kernels::kAdamWChunk;
    kernels::AdamWMultiParams p;
    p.count = int(nr);
    p.chunks = start[nr];
    SHOAL_CHECK(p.chunks <= INT32_MAX, "adamw_multi: {} chunks exceed one launch", p.chunks);
    if (nr == 0) return p;
    hold = from_host(h);
    char* d = static_cast<char*>(hold.raw());
    p.tensors = reinterpret_cast<const kernels::AdamWTensorPtrs*>(d);
    p.chunk_start = reinterpret_cast<const int64_t*>(d + row_bytes);
    return p;
  }

  // bf16 GEMM operands (CudaGemm::bf16). A parameter's storage (Storage::parameter) keeps a bf16
  // copy of all its elements in Storage::derived, element for element, so any view of it is the
  // same view of the copy; the copy is rebuilt when the storage's version has moved (any pointer
  // taken into it, i.e. any write) and rewritten by adamw_multi in its update pass. Other operands
  // (activations) are rounded into a contiguous copy per call. Reads go through Storage::data, so
  // they leave the version alone. Not thread-safe: one thread uses a parameter's copy at a time.
  struct Bf16Operand {
    const uint16_t* ptr = nullptr;              // element [0, 0] (or [0, 0, 0])
    int64_t row_stride = 0, matrix_stride = 0;  // in elements; matrix_stride 0 for 2-D
    Tensor hold;                                // a per-call copy (stream-ordered free)
  };
  Bf16Operand bf16_operand(const Tensor& t) {
    const int64_t cols = t.size(-1);
    if (t.storage()->parameter) {
      Bf16Operand o;
      o.ptr = kept_bf16(*t.storage()) + t.offset();
      o.row_stride = std::max(t.stride(-2), cols);
      o.matrix_stride = t.ndim() == 3 ? t.stride(0) : 0;
      return o;
    }
    Bf16Operand o;
    o.hold = to_bf16(t);
    o.ptr = static_cast<const uint16_t*>(o.hold.raw());
    o.row_stride = cols;
    o.matrix_stride = t.ndim() == 3 ? t.size(1) * cols : 0;
    return o;
  }
  // The storage's current bf16 copy (made or refreshed on the stream when needed).
  const uint16_t* kept_bf16(Storage& st) {
    SHOAL_CHECK(st.device == Device::cuda, "bf16 copy of a parameter that is not on the device");
    const int64_t n = int64_t(st.bytes / sizeof(float));
    auto* copy = static_cast<Tensor*>(st.derived.get());
    if (!copy) {
      auto t = std::make_shared<Tensor>(empty({n}, DType::bf16));
      copy = t.get();
      st.derived = std::move(t);
      st.derived_version = st.version.load() - 1;  // not current yet
    }
    auto* dst = static_cast<uint16_t*>(copy->raw());
    if (st.derived_version != st.version.load()) {
      kernels::Bf16RowsParams p;
      p.src = static_cast<const float*>(st.data);
      p.dst = dst;
      p.rows = 1;
      p.cols = n;
      p.src_stride = n;
      SHOAL_CUDA_CHECK(kernels::f32_rows_to_bf16_cuda(p, stream()));
      st.derived_version = st.version.load();
    }
    return dst;
  }
  // c = alpha op(a) op(b) + beta c on bf16 operands (row strides lda, ldb), f32 accumulation and
  // output, on `handle`'s stream.
  static void gemm_bf16(cublasHandle_t handle, const uint16_t* a, int64_t lda, bool ta,
                        const uint16_t* b, int64_t ldb, bool tb, Tensor& c, int64_t m, int64_t n,
                        int64_t k, float alpha, float beta) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    SHOAL_CUBLAS_CHECK(cublasGemmEx(
        handle, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m),
        int(k), &alpha, b, CUDA_R_16BF, int(ldb), a, CUDA_R_16BF, int(lda), &beta, c.f32(),
        CUDA_R_32F, int(row_stride(c)), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // A contiguous bf16 copy of an f32 operand (2-D or 3-D, unit last stride), rounded to nearest.
  Tensor to_bf16(const Tensor& t) {
    Tensor out = empty(t.shape(), DType::bf16);
    const int64_t cols = t.size(-1), ld = std::max(t.stride(-2), cols);
    const bool flat = t.ndim() == 2 || t.size(0) <= 1 || t.stride(0) == t.size(1) * ld;
    if (!flat || cols <= 1) {
      copy(t, out);  // the general strided conversion (same rounding)
      return out;
    }
    kernels::Bf16RowsParams p;
    p.src = t.f32();
    p.dst = static_cast<uint16_t*>(out.raw());
    p.cols = cols;
    p.rows = t.numel() / cols;
    p.src_stride = ld;
    SHOAL_CUDA_CHECK(kernels::f32_rows_to_bf16_cuda(p, stream()));
    return out;
  }

  // Streams (each with its own cuBLAS handle, so that workspaces are not shared) that
  // grouped_matmul forks its GEMMs onto; created on first use.
  static constexpr int kLanes = 4;
  struct GemmLane {
    cudaStream_t stream = nullptr;
    cublasHandle_t cublas = nullptr;
    cudaEvent_t done = nullptr;
  };
  void ensure_lanes() {
    if (!lanes_.empty()) return;
    SHOAL_CUDA_CHECK(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
    for (int i = 0; i < kLanes; ++i) {
      GemmLane l;
      SHOAL_CUDA_CHECK(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking));
      SHOAL_CUDA_CHECK(cudaEventCreateWithFlags(&l.done, cudaEventDisableTiming));
      SHOAL_CUBLAS_CHECK(cublasCreate(&l.cublas));
      SHOAL_CUBLAS_CHECK(cublasSetStream(l.cublas, l.stream));
      SHOAL_CUBLAS_CHECK(cublasSetMathMode(l.cublas, CUBLAS_DEFAULT_MATH));
      lanes_.push_back(l);
    }
  }
  std::vector<GemmLane> lanes_;
  cudaEvent_t fork_ = nullptr;

  // Host -> device bytes of a contiguous host tensor (ordered on the stream; the runtime stages
  // pageable memory before returning, so `h` may be freed afterwards).
  void upload(const Tensor& h, void* dst) {
    if (h.nbytes() == 0) return;
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(dst, h.raw(), h.nbytes(), cudaMemcpyHostToDevice, stream()));
  }

  // An index-like input on the device: itself when already there, else an uploaded copy.
  Tensor on_device(const Tensor& t, const char* what) {
    SHOAL_CHECK(t.defined(), "{}: undefined tensor", what);
    if (t.device() == Device::cuda) return t;
    return from_host(t);
  }

  static kernels::StridedCopyParams strided(const Tensor& src, const Tensor& dst) {
    SHOAL_CHECK(dst.ndim() <= kernels::kMaxCopyDims, "copy: {} has more than {} dims",
                dst.describe(), kernels::kMaxCopyDims);
    kernels::StridedCopyParams p;
    p.src = src.raw();
    p.dst = dst.raw();
    p.src_type = elem_type(src.dtype());
    p.dst_type = elem_type(dst.dtype());
    p.ndim = dst.ndim();
    for (int d = 0; d < dst.ndim(); ++d) {
      p.shape[d] = dst.size(d);
      p.src_strides[d] = src.stride(d);
      p.dst_strides[d] = dst.stride(d);
    }
    return p;
  }

  cuda::CudaContext& ctx_;
  CudaBackendOptions opt_;
};

}  // namespace

const char* cuda_grouped_name(CudaGrouped g) {
  switch (g) {
    case CudaGrouped::loop:
      return "loop";
    case CudaGrouped::streams:
      return "streams";
    case CudaGrouped::batched:
      return "batched";
  }
  return "?";
}

CudaGrouped parse_cuda_grouped(const std::string& name) {
  for (CudaGrouped g : {CudaGrouped::loop, CudaGrouped::streams, CudaGrouped::batched})
    if (name == cuda_grouped_name(g)) return g;
  SHOAL_FAIL("unknown grouped GEMM mode '{}' (loop, streams or batched)", name);
}

const char* cuda_gemm_name(CudaGemm g) {
  switch (g) {
    case CudaGemm::f32:
      return "f32";
    case CudaGemm::tf32:
      return "tf32";
    case CudaGemm::bf16:
      return "bf16";
  }
  return "?";
}

CudaGemm parse_cuda_gemm(const std::string& name) {
  for (CudaGemm g : {CudaGemm::f32, CudaGemm::tf32, CudaGemm::bf16})
    if (name == cuda_gemm_name(g)) return g;
  SHOAL_FAIL("unknown CUDA GEMM precision '{}' (f32, tf32 or bf16)", name);
}

const char* cuda_attention_name(CudaAttention a) {
  switch (a) {
    case CudaAttention::f32:
      return "f32";
    case CudaAttention::tf32:
      return "tf32";
    case CudaAttention::bf16:
      return "bf16";
  }
  return "?";
}

CudaAttention parse_cuda_attention(const std::string& name) {
  for (CudaAttention a : {CudaAttention::f32, CudaAttention::tf32, CudaAttention::bf16})
    if (name == cuda_attention_name(a)) return a;
  SHOAL_FAIL("unknown CUDA attention precision '{}' (f32, tf32 or bf16)", name);
}

std::unique_ptr<Backend> make_cuda_backend(int device, const CudaBackendOptions& options) {
  return std::make_unique<CudaBackend>(device, options);
}

}  // namespace shoal
