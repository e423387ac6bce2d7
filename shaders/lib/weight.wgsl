// Scalar input and weight bindings of the float linear kernels (matmul.wgsl, matvec.wgsl), and
// the weight's exact widening to f32.

#include half

@group(0) @binding(1) var<storage, read> x: array<f32>;
#ifdef F16_STORAGE
@group(0) @binding(2) var<storage, read> w: array<f16>;
#else
#ifdef W16
@group(0) @binding(2) var<storage, read> w: array<u32>;
#else
@group(0) @binding(2) var<storage, read> w: array<f32>;
#endif
#endif

// Weight element i, widened exactly to f32: stored f32; with F16_STORAGE an array<f16> (needs
// shader-f16); with W16 two 16-bit values per word (element 2k in the low half), bf16 (BF16) or f16.
fn weight(i: u32) -> f32 {
#ifdef F16_STORAGE
    return f32(w[i]);
#else
#ifdef W16
    return half_in(w[i / 2u], (i & 1u) == 1u);
#else
    return w[i];
#endif
#endif
}
