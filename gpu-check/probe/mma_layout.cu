// A hardware probe of mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}:
// each lane builds its A, B and C fragments from whole matrices by the
// PTX ISA's tables ("Matrix Fragments for mma.m16n8k16 with floating
// point type"), the instruction runs, each lane scatters its D fragment by
// the same tables, and the host compares D with C + A·B computed three
// ways from the rounded inputs:
//   exact  the f64 sum rounded once to f32;
//   seq    f32 fmaf over k = 0..15 in order, starting from C (what the
//          CPU backend's emulation does);
// and reports the largest difference and how many elements each matches
// bit for bit. A wrong table shows as differences of the inputs' size.
//
// Built and run on the GPU machine by gpu-check/run.sh's probe step:
//     nvcc -arch=sm_90 -O2 -o mma_layout mma_layout.cu && ./mma_layout
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

// The tables, written out from the PTX ISA (groupID = lane >> 2,
// threadID_in_group = lane % 4).
__host__ __device__ inline int a_row(int lane, int i) {
    int g = lane >> 2;
    return (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
}
__host__ __device__ inline int a_col(int lane, int i) {
    int t = lane & 3;
    return t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}
__host__ __device__ inline int b_row(int lane, int i) {
    int t = lane & 3;
    return t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
}
__host__ __device__ inline int b_col(int lane, int) { return lane >> 2; }
__host__ __device__ inline int c_row(int lane, int i) { return (lane >> 2) + (i >= 2 ? 8 : 0); }
__host__ __device__ inline int c_col(int lane, int i) { return (lane & 3) * 2 + (i & 1); }

// A is 16x16 row-major, B 16x8 (k x n) row-major, C and D 16x8 row-major;
// all as raw 16-bit patterns for A and B.
template <bool BF16>
__global__ void probe(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
    int lane = threadIdx.x;
    uint32_t ra[4], rb[2];
    float rc[4], rd[4];
    for (int r = 0; r < 4; r++) {
        uint32_t lo = a[a_row(lane, 2 * r) * 16 + a_col(lane, 2 * r)];
        uint32_t hi = a[a_row(lane, 2 * r + 1) * 16 + a_col(lane, 2 * r + 1)];
        ra[r] = lo | (hi << 16);
    }
    for (int r = 0; r < 2; r++) {
        uint32_t lo = b[b_row(lane, 2 * r) * 8 + b_col(lane, 2 * r)];
        uint32_t hi = b[b_row(lane, 2 * r + 1) * 8 + b_col(lane, 2 * r + 1)];
        rb[r] = lo | (hi << 16);
    }
    for (int i = 0; i < 4; i++) rc[i] = c[c_row(lane, i) * 8 + c_col(lane, i)];
    if (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%10,%11,%12,%13};\n"
            : "=f"(rd[0]), "=f"(rd[1]), "=f"(rd[2]), "=f"(rd[3])
            : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]),
              "f"(rc[0]), "f"(rc[1]), "f"(rc[2]), "f"(rc[3]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%10,%11,%12,%13};\n"
            : "=f"(rd[0]), "=f"(rd[1]), "=f"(rd[2]), "=f"(rd[3])
            : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]),
              "f"(rc[0]), "f"(rc[1]), "f"(rc[2]), "f"(rc[3]));
    }
    for (int i = 0; i < 4; i++) d[c_row(lane, i) * 8 + c_col(lane, i)] = rd[i];
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double uniform() {  // in [-1, 1)
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) / (double)(1ull << 52) - 1.0;
}
static float to_float(uint16_t bits, bool bf16) {
    if (bf16) {
        uint32_t w = (uint32_t)bits << 16;
        float f;
        memcpy(&f, &w, 4);
        return f;
    }
    return __half2float(__ushort_as_half(bits));
}
static uint16_t from_double(double x, bool bf16) {
    if (bf16) return __bfloat16_as_ushort(__float2bfloat16((float)x));
    return __half_as_ushort(__float2half((float)x));
}

template <bool BF16>
static int run(const char* name, int trials) {
    uint16_t *da, *db;
    float *dc, *dd;
    cudaMalloc(&da, 256 * 2);
    cudaMalloc(&db, 128 * 2);
    cudaMalloc(&dc, 128 * 4);
    cudaMalloc(&dd, 128 * 4);
    double worst_rel = 0;
    long exact_bits = 0, seq_bits = 0, total = 0;
    for (int t = 0; t < trials; t++) {
        std::vector<uint16_t> a(256), b(128);
        std::vector<float> c(128), d(128);
        // Mixed magnitudes, so that the order and rounding of the sum matter.
        double scale = (t % 3 == 0) ? 1.0 : (t % 3 == 1 ? 64.0 : 1.0 / 64.0);
        for (auto& x : a) x = from_double(uniform() * scale, BF16);
        for (auto& x : b) x = from_double(uniform() * 4.0, BF16);
        for (auto& x : c) x = (float)(uniform() * 8.0 * scale);
        cudaMemcpy(da, a.data(), 512, cudaMemcpyHostToDevice);
        cudaMemcpy(db, b.data(), 256, cudaMemcpyHostToDevice);
        cudaMemcpy(dc, c.data(), 512, cudaMemcpyHostToDevice);
        probe<BF16><<<1, 32>>>(da, db, dc, dd);
        if (cudaDeviceSynchronize() != cudaSuccess) {
            printf("{\"instr\": \"%s\", \"error\": \"%s\"}\n", name,
                   cudaGetErrorString(cudaGetLastError()));
            return 1;
        }
        cudaMemcpy(d.data(), dd, 512, cudaMemcpyDeviceToHost);
        for (int m = 0; m < 16; m++)
            for (int n = 0; n < 8; n++) {
                double exact = c[m * 8 + n], mag = fabs(exact);
                float seq = c[m * 8 + n];
                for (int k = 0; k < 16; k++) {
                    double p = (double)to_float(a[m * 16 + k], BF16) * to_float(b[k * 8 + n], BF16);
                    exact += p;
                    mag += fabs(p);
                    seq = fmaf(to_float(a[m * 16 + k], BF16), to_float(b[k * 8 + n], BF16), seq);
                }
                float got = d[m * 8 + n];
                double rel = fabs(got - exact) / (mag > 0 ? mag : 1);
                if (rel > worst_rel) worst_rel = rel;
                exact_bits += (got == (float)exact);
                seq_bits += (got == seq);
                total++;
            }
    }
    bool ok = worst_rel < 1e-5;
    printf("{\"instr\": \"%s\", \"trials\": %d, \"elements\": %ld, \"worst_error_over_sum_of_magnitudes\": %.3e, "
           "\"bit_equal_to_exact_sum\": %ld, \"bit_equal_to_sequential_fma\": %ld, \"layout_ok\": %s}\n",
           name, trials, total, worst_rel, exact_bits, seq_bits, ok ? "true" : "false");
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    cudaFree(dd);
    return ok ? 0 : 1;
}

int main() {
    int bad = run<false>("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", 300);
    bad |= run<true>("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", 300);
    return bad;
}
