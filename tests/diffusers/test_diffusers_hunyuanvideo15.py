"""TeaCache on diffusers' HunyuanVideo 1.5 transformer (``HunyuanVideo15Transformer3DModel``: dual-stream
``transformer_blocks`` only), fed as HunyuanVideo15Pipeline and its image-to-video pipeline feed it; tiny random
weights, runs in CI."""

import pytest
import torch

import teacache_sample_video as tc
from reference_rule import DIFFUSERS, ReferenceTeaCache, record_first
from tinyhv.random_models import make_inputs_15, make_transformer_15, sample, v15_caller
from tiny_diffusers import against_the_reference

STEPS = 12
IMAGE_LATENT = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
REFERENCE_15 = dict(DIFFUSERS, block_lists=("transformer_blocks",))

#: text-to-video, image-to-video (first frame's latent and a mask in channels, image embeddings), and a step
#: distilled (meanflow) model at 8 steps, each with its transformer, inputs and caller
CASES = {
    "t2v": (dict(), dict(), dict()),
    "i2v": (dict(), dict(image=True), dict(image_latents=IMAGE_LATENT)),
    "meanflow": (dict(use_meanflow=True), dict(), dict(meanflow_steps=8)),
}


def _case(name):
    config, inputs, caller = CASES[name]
    steps = caller.get("meanflow_steps", STEPS)
    make = lambda: make_transformer_15(**config)  # noqa: E731
    return make, make_inputs_15(**inputs), (lambda call: v15_caller(call, **caller)), steps


@pytest.mark.parametrize("name", list(CASES))
def test_threshold_zero_is_bit_identical(name):
    make, inputs, wrap, steps = _case(name)
    model = make()
    cache = tc.enable_teacache(model, 0.0, num_steps=steps)
    with torch.no_grad():
        assert torch.equal(sample(wrap(model), inputs, steps), sample(wrap(make()), inputs, steps))
    assert cache.stats()["computed_steps"] == list(range(steps))


@pytest.mark.parametrize("name", list(CASES))
def test_decisions_equal_the_reference_rule(name):
    make, inputs, wrap, steps = _case(name)
    for thresh in (0.15, 0.3, 0.6, 1.2):
        ours, theirs = against_the_reference(thresh, steps, make, wrap=wrap, inputs=inputs, reference=REFERENCE_15)
        assert ours == theirs
        if len(theirs[0]) < steps:
            break
    else:
        pytest.fail(f"retune: nothing skipped at {steps} steps: {theirs}")


def test_both_guidance_branches_see_one_indicator_but_keep_their_own_residuals():
    """The guider calls the transformer once per branch (inside ``cache_context``). 1.5's modulation depends on the
    timestep alone and both branches denoise the same latents, so their indicators are equal and so are their
    decisions; their residuals differ (another prompt), and each is kept for its own branch."""
    make, inputs, wrap, steps = _case("t2v")
    negative = make_inputs_15(seed=7)
    negative["hidden_states"] = inputs["hidden_states"]
    ours, theirs = against_the_reference(0.3, STEPS, make, negative=negative, wrap=wrap, inputs=inputs,
                                         reference=REFERENCE_15)
    assert ours == theirs and len(ours) == 2 and len(ours[0]) < STEPS
    model = make()
    cache = tc.enable_teacache(model, 0.3, num_steps=STEPS)
    residuals = []

    def in_contexts(**kw):
        name = "pred_uncond" if kw["encoder_hidden_states"] is negative["encoder_hidden_states"] else "pred_cond"
        with model.cache_context(name):
            out = wrap(model)(**kw)
        residuals.append(cache.generation.current.residual)
        return out

    with torch.no_grad():
        sample(in_contexts, inputs, STEPS, negative=negative)
    branches = cache.stats()["branches"]
    assert branches[0]["rel_l1"] == branches[1]["rel_l1"]
    assert not torch.equal(residuals[0], residuals[1])


def test_disable_restores_the_plain_transformer():
    make, inputs, wrap, steps = _case("i2v")
    model = make()
    forwards = [vars(block).get("forward") for block in model.transformer_blocks]
    hooks = (len(model._forward_pre_hooks), len(model._forward_hooks))
    cache = tc.enable_teacache(model, 0.6, num_steps=STEPS)
    with torch.no_grad():
        sample(wrap(model), inputs, STEPS)
    assert cache.stats()["skipped_steps"]
    cache.disable()
    assert [vars(block).get("forward") for block in model.transformer_blocks] == forwards
    assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == hooks
    with torch.no_grad():
        assert torch.equal(sample(wrap(model), inputs, STEPS), sample(wrap(make()), inputs, STEPS))


def test_the_indicator_is_what_the_first_block_modulates():
    make, inputs, wrap, _ = _case("i2v")
    model = make()
    block, seen = model.transformer_blocks[0], {}
    hooks = [block.register_forward_pre_hook(record_first(seen, "args")),
             block.attn.to_q.register_forward_pre_hook(record_first(seen, "q_in", 0))]
    with torch.no_grad():
        wrap(model)(**{**inputs, "timestep": torch.tensor([900.0]), "return_dict": False})
        for h in hooks:
            h.remove()
        adapter = tc._DiffusersHunyuanVideoAdapter(model)
        assert adapter.blocks == list(model.transformer_blocks)
        assert torch.equal(adapter.modulated_input(block, seen["args"], {}), seen["q_in"])
        assert torch.equal(REFERENCE_15["modulated"](block, seen["args"], {}), seen["q_in"])


def test_another_diffusers_model_with_transformer_blocks_is_refused():
    """The adapter is for diffusers' HunyuanVideo classes: a model that merely has ``transformer_blocks`` with a
    ``norm1`` (Flux, Wan, ...) is not taken for one."""
    class OtherTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList([torch.nn.Module()])
            self.transformer_blocks[0].norm1 = torch.nn.LayerNorm(4)

    with pytest.raises(TypeError, match="block layout of OtherTransformer"):
        tc.enable_teacache(OtherTransformer(), 0.15)


def test_reference_skips_on_the_15_layout():
    """The reference itself, on this layout: a skipped step leaves the block list empty and adds the residual
    before ``norm_out`` (so its agreement above is not two identical no-ops)."""
    make, inputs, wrap, steps = _case("t2v")
    ref = ReferenceTeaCache(make(), STEPS, 0.6, **REFERENCE_15)
    with torch.no_grad():
        skipped = sample(wrap(ref), inputs, STEPS)
        plain = sample(wrap(make()), inputs, STEPS)
    assert not all(ref.decisions) and not torch.equal(skipped, plain)


def test_without_a_profile_it_warns_that_no_coefficients_are_published_for_15():
    from loguru import logger

    messages = []
    tc._warn_once.cache_clear()  # once per process: forget earlier tests' warnings
    sink = logger.add(messages.append, level="WARNING")
    try:
        tc.enable_teacache(make_transformer_15(), 0.15).disable()
        tc.enable_teacache(make_transformer_15(), 0.15).disable()  # the same warning is not logged again
        tc.enable_teacache(make_transformer_15(), 0.15, coefficients=(1.0, 0.0)).disable()
        for indicator in tc.INDICATORS[1:]:  # the indicators that need no coefficients: nothing to warn about
            tc.enable_teacache(make_transformer_15(), 0.15, indicator=indicator).disable()
    finally:
        logger.remove(sink)
    assert len(messages) == 1 and "no coefficients are published for HunyuanVideo 1.5" in messages[0]
    assert "--teacache-indicator residual-rate --teacache-skip call --teacache-rule fitted" in messages[0]  # the recommendation


# -- the CLI on tiny local 1.5 pipelines ---------------------------------------------------------------------------

PIPELINES_15 = {"v15": "HunyuanVideo15Pipeline", "v15_i2v": "HunyuanVideo15ImageToVideoPipeline"}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    import numpy as np
    from PIL import Image

    from tiny_diffusers import make_tiny_pipeline

    root = tmp_path_factory.mktemp("pipelines15")
    image = root / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    return {kind: make_tiny_pipeline(root / kind, kind) for kind in PIPELINES_15}, image


def _cli(pipeline, save, image, *extra):
    return tc.main(["--diffusers-model", str(pipeline), "--prompt", "a cat walks on the grass", "--video-size", "32",
                    "32", "--video-length", "5", "--infer-steps", "8", "--seed", "3", "--save-path", str(save),
                    *(["--image", str(image)] if image else []), *extra])


def _report(save):
    import json

    (video,) = save.glob("*.mp4")
    return video, json.loads(video.with_suffix(".json").read_text())


@pytest.mark.parametrize("kind", list(PIPELINES_15))
def test_cli_threshold_zero_is_the_plain_pipeline(pipelines, tmp_path, kind):
    import diffusers
    import imageio.v3 as iio
    from diffusers.utils import load_image

    folders, image = pipelines
    image = image if kind == "v15_i2v" else None
    assert _cli(folders[kind], tmp_path, image, "--rel-l1-thresh", "0") == 0
    video, report = _report(tmp_path)
    pipe = getattr(diffusers, PIPELINES_15[kind]).from_pretrained(folders[kind])
    size = {"image": load_image(str(image))} if image else {"height": 32, "width": 32}
    frames = pipe(prompt="a cat walks on the grass", num_frames=5, num_inference_steps=8, output_type="pt",
                  generator=torch.Generator("cpu").manual_seed(3), **size).frames[0]
    tc.save_video(frames.permute(1, 0, 2, 3), tmp_path / "plain.mp4")
    assert (iio.imread(video) == iio.imread(tmp_path / "plain.mp4")).all()
    assert report["pipeline"] == PIPELINES_15[kind] and report["skipped_steps"] == []
    assert report["model"]["class"] == "HunyuanVideo15Transformer3DModel"


@pytest.mark.parametrize("kind", list(PIPELINES_15))
def test_cli_guider_branches_share_the_indicator_and_take_the_reference_decisions(pipelines, tmp_path, kind):
    from reference_rule import reference_computed_steps

    folders, image = pipelines
    assert _cli(folders[kind], tmp_path, image if kind == "v15_i2v" else None, "--rel-l1-thresh", "0.3") == 0
    _, report = _report(tmp_path)
    cond, uncond = report["branches"]  # the folder's guider: CFG at 6, one call per branch
    assert report["num_branches"] == 2 and cond["rel_l1"] == uncond["rel_l1"]
    for branch in (cond, uncond):
        assert branch["computed_steps"] == reference_computed_steps(branch["rel_l1"], 0.3)
    assert cond["skipped_steps"], "retune: nothing skipped"
