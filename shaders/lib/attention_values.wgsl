// The values of an attention kernel (see attention.wgsl): per-head rows, or a shared f32 or
// INT8 latent. The including shader declares `v` (and `vscale` with LATENT_I8) with its own
// binding numbers; per-head rows with OPERAND_TEXTURES as a texture_2d<u32> (lib/texels.wgsl).

// Value vec4 c (dims 4c..4c+3) of key j for kv head g.
fn value4(b: u32, j: u32, g: u32, c: u32) -> vec4<f32> {
    return value4_scaled(b, j, g, c, value_scale(b, j));
}

// The scale of key j's INT8 latent row (LATENT_I8); 1 for the other values, which ignore it.
fn value_scale(b: u32, j: u32) -> f32 {
#ifdef LATENT_I8
    return vscale[b * params.kv_capacity + j];
#else
    return 1.0;
#endif
}

// value4 with key j's row scale `scale` (value_scale(b, j)) read once by the caller for all of
// the row's vec4s.
fn value4_scaled(b: u32, j: u32, g: u32, c: u32, scale: f32) -> vec4<f32> {
#ifdef LATENT_F32
    let base = (b * params.kv_capacity + j) * params.value_width;
    var x = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        if (4u * c + e < params.value_width) {
            x[e] = v[base + 4u * c + e];
        }
    }
    return x;
#else
#ifdef LATENT_I8
    if (c >= params.value_width) {
        return vec4<f32>(0.0);
    }
    let row = b * params.kv_capacity + j;
    return vec4<f32>(unpack4xI8(v[row * params.value_width + c])) * scale;
#else
#ifdef OPERAND_TEXTURES
    return texel_f32(v, kv_row(b, j, g) * HD4 + c);
#else
    return v[kv_row(b, j, g) * HD4 + c];
#endif
#endif
#endif
}
