"""Tiny random-weight diffusers pipelines for tests: SD 1.x/2.x, SDXL, SD3, SD3.5 and FLUX in miniature.

Every component is built from a config with a fixed torch seed (no download), so a test can
save a pipeline to a temp folder (`saved`) and load it back (`load`) through the same code
path as a hub id. Latents are 4 x 8 x 8 and images 16 x 16 (a VAE with one downsampling);
FLUX packs the latent into 4 x 4 tokens of 16 channels. Test modules import the `one_thread`
fixture too.
"""

from __future__ import annotations

import string

import pytest
import torch

SIZE = 16          # image side in pixels
TEXT_LENGTH = 16   # CLIP token positions (77 in the real models)

# Stable Diffusion 1.x's own noise schedule (scheduler_config.json of SD 1.5 / 2.x).
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                   beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
                   set_alpha_to_one=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run ~100x slower with two OpenMP threads on a shared, busy 2-core machine;
    a test module that imports this fixture runs on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def saved(pipe, tmp_path_factory, name: str) -> str:
    """The pipeline saved to a fresh temp folder, as save_pretrained writes a hub snapshot."""
    folder = tmp_path_factory.mktemp(name)
    pipe.save_pretrained(folder)
    return str(folder)


def load(folder: str, **options):
    """A saved tiny pipeline loaded at the tiny image size (FLUX's native size is 1024 px)."""
    from noisealign.models.diffusers_loading import load_diffusers_model

    return load_diffusers_model(folder, height=SIZE, width=SIZE, **options)


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


def t5_encoder():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=55, d_model=64, d_ff=37, d_kv=16, num_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8)).eval()


def flow_vae():
    """The VAE of SD3 / FLUX: latents are shifted as well as scaled, no quantization convolutions."""
    return vae(shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False)


def sd3_pipeline(seed: int = 0, sd35: bool = False):
    """StableDiffusion3Pipeline: MMDiT transformer, two CLIP encoders and a T5, flow matching.

    sd35: SD3.5's transformer (query-key RMS norm, a dual-attention first layer as in SD3.5
    Medium); the rest of the pipeline is SD3's.
    """
    from diffusers import (FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    sd35_config = dict(qk_norm="rms_norm", dual_attention_layers=(0,)) if sd35 else {}
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16, **sd35_config)
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=flow_vae(),
        text_encoder=CLIPTextModelWithProjection(clip_config()).eval(), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(clip_config()).eval(), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(), tokenizer_3=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def flux_pipeline(variant: str = "dev", seed: int = 0):
    """FluxPipeline: a CLIP (pooled) and a T5 (states), the FLUX transformer on 2x2-packed latents.

    variant "dev": a guidance embedding and FLUX.1-dev's resolution-dependent shift;
    "schnell": neither, FLUX.1-schnell's unshifted schedule (as their hub configs have them).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    dev = variant == "dev"
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=dev,
        axes_dims_rope=(4, 6, 6))
    schedule = dict(use_dynamic_shifting=True, shift=3.0) if dev else dict(use_dynamic_shifting=False, shift=1.0)
    return FluxPipeline(
        transformer=transformer, vae=flow_vae(), text_encoder=CLIPTextModel(clip_config()).eval(),
        tokenizer=clip_tokenizer(), text_encoder_2=t5_encoder(), tokenizer_2=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                  max_image_seq_len=4096, **schedule))
