"""training.architecture's UNet layouts: where the words reach the latent pixels."""
import torch

from training import architecture


def attention_sizes(unet) -> dict[str, int]:
    """Each cross-attention's name -> the side of the square latent map it reads, from one forward pass."""
    sizes: dict[str, int] = {}
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: sizes.setdefault(name, int(out.shape[1] ** 0.5)))
             for name, module in unet.named_modules() if name.endswith("attn2")]
    with torch.no_grad():
        unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 16, 64))
    for hook in hooks:
        hook.remove()
    return sizes


def test_the_default_layout_reads_the_words_at_8x8_only():
    assert set(attention_sizes(architecture.build_unet()).values()) == {8}


def test_fine_attention_reads_them_at_16x16_too_with_no_self_attention_there():
    unet = architecture.build_unet(fine_attention=True)
    sizes = attention_sizes(unet)
    assert sorted(set(sizes.values())) == [8, 16]
    fine = [name for name, side in sizes.items() if side == 16]
    assert fine and all(name.startswith("down_blocks.0.") for name in fine)
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    assert block.only_cross_attention and block.attn1.is_cross_attention


def test_fine_self_attention_makes_the_16x16_block_a_whole_one_whose_first_attention_reads_the_pixels():
    unet = architecture.build_unet(fine_self_attention=True)
    sizes = attention_sizes(unet)
    assert sorted(set(sizes.values())) == [8, 16]
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    assert not block.only_cross_attention and not block.attn1.is_cross_attention
    assert block.attn2.is_cross_attention
