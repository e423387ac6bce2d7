// f32 vec4s read from a texture that holds their bits: an rgba32uint texture_2d, row-major,
// OPERAND_TEXTURES texels a row, texel t holding vec4 t (kernels::attention's OperandTextures
// copies a storage buffer's rows there). CPU adapters fetch texels with vector gathers, where
// llvmpipe loads storage buffers one lane at a time (lib/tiles.wgsl); the bits, and so every
// result, are the storage buffer's.
const OPERAND_WIDTH: u32 = {{OPERAND_TEXTURES}}u;

fn texel_f32(tex: texture_2d<u32>, t: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(textureLoad(tex, vec2<u32>(t % OPERAND_WIDTH, t / OPERAND_WIDTH), 0));
}
