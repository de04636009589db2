"""Tiny random-weight diffusers pipelines for tests: SD 1.x/2.x, SDXL and SD3 in miniature.

Every component is built from a config with a fixed torch seed (no download), so a test can
save a pipeline to a temp folder and load it back through the same code path as a hub id.
Latents are 4 x 8 x 8 and images 16 x 16 (a VAE with one downsampling).
"""

from __future__ import annotations

import string

import torch

SIZE = 16          # image side in pixels
TEXT_LENGTH = 16   # CLIP token positions (77 in the real models)

# Stable Diffusion 1.x's own noise schedule (scheduler_config.json of SD 1.5 / 2.x).
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                   beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
                   set_alpha_to_one=False)


def clip_tokenizer():
    """A character-level CLIP tokenizer: every letter is a token (no merges)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LENGTH)


def t5_tokenizer():
    """A character-level T5 (unigram) tokenizer."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + c, -1.0) for c in string.ascii_lowercase]
    pieces += [(c, -2.0) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip_config(projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=54, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=TEXT_LENGTH,
                          projection_dim=projection_dim, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def vae(**kwargs):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, norm_num_groups=32, sample_size=SIZE, **kwargs)


def sd_pipeline(prediction_type: str = "epsilon", seed: int = 0):
    """StableDiffusionPipeline with SD 1.5's schedule and DDIM (v-prediction makes it SD 2.x-like)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32)
    return StableDiffusionPipeline(
        vae=vae(), text_encoder=CLIPTextModel(clip_config()).eval(), tokenizer=clip_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(prediction_type=prediction_type, **SD_SCHEDULE),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def sdxl_pipeline(seed: int = 0, latents_stats: bool = False, **schedule):
    """StableDiffusionXLPipeline: two text encoders, the UNet's added text_embeds / time_ids.

    Its Euler scheduler config is SDXL base's ('leading' spacing); `schedule` overrides it
    (e.g. timestep_spacing="trailing" as in SDXL-Turbo). latents_stats gives the VAE the
    per-channel latents_mean / latents_std that some SDXL finetunes' VAEs carry.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32)
    stats = dict(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.9, 1.1, 0.8, 1.2]) if latents_stats else {}
    return StableDiffusionXLPipeline(
        vae=vae(**stats), text_encoder=CLIPTextModel(clip_config()).eval(),
        text_encoder_2=CLIPTextModelWithProjection(clip_config()).eval(),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler.from_config({**SD_SCHEDULE, "timestep_spacing": "leading", **schedule}),
        force_zeros_for_empty_prompt=True)


def sd3_pipeline(seed: int = 0):
    """StableDiffusion3Pipeline: MMDiT transformer, two CLIP encoders and a T5, flow matching."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16)
    t5 = T5EncoderModel(T5Config(vocab_size=55, d_model=64, d_ff=37, d_kv=16, num_layers=1,
                                 num_heads=4, relative_attention_num_buckets=8)).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=vae(shift_factor=0.0609, scaling_factor=1.5305,
                                         use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(clip_config()).eval(), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(clip_config()).eval(), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
