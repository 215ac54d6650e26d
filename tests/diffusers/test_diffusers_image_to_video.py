"""TeaCache on diffusers' image-to-video HunyuanVideo: the I2V transformer (``token_replace``, ``latent_concat``),
SkyReels' (image latents in channels), FramePack's (several sections per video); tiny random weights, runs in CI."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from loguru import logger
from PIL import Image

import teacache_sample_video as tc
from reference_rule import DIFFUSERS, diffusers_modulated, record_first, reference_computed_steps
from tinyhv.random_models import i2v_caller, make_i2v_transformer, make_inputs, make_transformer, sample
from tiny_diffusers import against_the_reference, make_tiny_pipeline

STEPS = 12
IMAGE_LATENT = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
CONDITIONS = ["token_replace", "latent_concat"]


def _first_frame_wrap(condition_type):
    return lambda call: i2v_caller(call, condition_type, IMAGE_LATENT)


# -- the transformers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("condition_type", CONDITIONS)
def test_threshold_zero_is_bit_identical(condition_type):
    model = make_i2v_transformer(condition_type)
    cache = tc.enable_teacache(model, 0.0, num_steps=STEPS)
    wrap = _first_frame_wrap(condition_type)
    with torch.no_grad():
        cached = sample(wrap(model), make_inputs(), STEPS)
        plain = sample(wrap(make_i2v_transformer(condition_type)), make_inputs(), STEPS)
    assert torch.equal(cached, plain) and cache.stats()["computed_steps"] == list(range(STEPS))


@pytest.mark.parametrize("condition_type", CONDITIONS)
def test_decisions_equal_the_reference_rule(condition_type):
    """Fed as HunyuanVideoImageToVideoPipeline feeds it; the reference computes the token-replace modulation of the
    first frame itself. Thresholds until one skips the second-to-last step (the reference does not force it)."""
    for thresh in (0.15, 0.3):
        ours, theirs = against_the_reference(thresh, STEPS, lambda: make_i2v_transformer(condition_type),
                                             wrap=_first_frame_wrap(condition_type))
        assert ours == theirs
        if STEPS - 2 not in theirs[0]:
            break
    else:
        pytest.fail(f"retune: no threshold skips step {STEPS - 2}: {theirs}")


@pytest.mark.parametrize("condition_type", CONDITIONS)
def test_true_cfg_keeps_a_state_per_branch(condition_type):
    ours, theirs = against_the_reference(0.3, STEPS, lambda: make_i2v_transformer(condition_type),
                                         negative=make_inputs(seed=7), wrap=_first_frame_wrap(condition_type))
    assert len(ours) == 2 and ours == theirs


def _modulated_after_the_first_frame(block, args, kwargs):
    return diffusers_modulated(block, args, kwargs)[:, args[6]:]  # arg 6: first_frame_num_tokens


def test_first_frame_excluded_takes_the_reference_decisions_on_the_other_frames():
    for negative in (None, make_inputs(seed=7)):
        ours, theirs = against_the_reference(
            0.3, STEPS, lambda: make_i2v_transformer("token_replace"), negative=negative,
            wrap=_first_frame_wrap("token_replace"), options=dict(first_frame="exclude"),
            reference=dict(DIFFUSERS, modulated=_modulated_after_the_first_frame))
        assert ours == theirs and any(len(steps) < STEPS for steps in ours)


def test_the_first_frame_only_dilutes_the_indicator():
    """The pipeline feeds the given image as the first latent frame at every step, modulated at timestep 0: those
    tokens do not change, so excluding them divides the change by a smaller mass (the rest's) and the indicator
    grows by the first frame's share, at every step; the first frame is 1 of 2 latent frames here."""
    traces = {}
    for first_frame in tc.FIRST_FRAME:
        model = make_i2v_transformer("token_replace")
        cache = tc.enable_teacache(model, 0.0, trace=True, first_frame=first_frame, num_steps=STEPS)
        with torch.no_grad():
            sample(_first_frame_wrap("token_replace")(model), make_inputs(), STEPS)
        traces[first_frame] = cache.stats()["rel_l1"][1:]
    ratios = [x / i for x, i in zip(traces["exclude"], traces["include"])]
    assert all(1.6 < r < 2.4 for r in ratios), ratios  # 1 / (1 - share), share about a half


@pytest.mark.parametrize("make", [lambda: make_i2v_transformer("latent_concat"), make_transformer],
                         ids=["latent_concat", "text-to-video"])
def test_first_frame_exclusion_is_refused_without_token_replace(make):
    with pytest.raises(ValueError, match="token_replace"):
        tc.enable_teacache(make(), 0.15, first_frame="exclude")


def test_token_replace_indicator_is_what_the_block_computes():
    """The first frame's tokens take the token-replace modulation: the indicator differs from one computed with the
    plain modulation on every token (so an adapter that ignored it would be caught by the reference tests)."""
    model = make_i2v_transformer("token_replace")
    block = model.transformer_blocks[0]
    seen = {}
    block.register_forward_pre_hook(record_first(seen, "args"))
    with torch.no_grad():
        model(**{**make_inputs(), "hidden_states": torch.randn(1, 4, 2, 8, 8), "timestep": torch.tensor([500.0]),
                 "return_dict": False})
    hidden, temb, first_frame = seen["args"][0], seen["args"][2], seen["args"][6]
    adapter = tc._DiffusersHunyuanVideoAdapter(model)
    modulated = adapter.modulated_input(block, seen["args"], {})
    shift, scale = block.norm1.linear(block.norm1.silu(temb)).chunk(6, dim=1)[:2]
    plain = block.norm1.norm(hidden) * (1 + scale[:, None]) + shift[:, None]
    assert torch.equal(modulated[:, first_frame:], plain[:, first_frame:])
    assert not torch.allclose(modulated[:, :first_frame], plain[:, :first_frame])


def test_skyreels_transformer_takes_the_reference_decisions():
    """SkyReels' transformer: plain HunyuanVideoTransformer3DModel with the image latents concatenated in channels."""
    def make():
        return make_transformer(in_channels=8)

    def wrap(call):
        def with_image(hidden_states, **kw):
            image = torch.zeros_like(hidden_states)
            image[:, :, :1] = IMAGE_LATENT
            return call(hidden_states=torch.cat([hidden_states, image], dim=1), **kw)
        return with_image

    for thresh in (0.15, 0.3):
        ours, theirs = against_the_reference(thresh, STEPS, make, wrap=wrap)
        assert ours == theirs and theirs[0] != list(range(STEPS))


def test_image_to_video_warns_that_the_coefficients_are_text_to_video_and_profiles_tell_them_apart():
    messages = []
    tc._warn_once.cache_clear()  # once per process: forget earlier tests' warnings
    sink = logger.add(messages.append, level="WARNING")
    try:
        tc.enable_teacache(make_i2v_transformer("token_replace"), 0.15).disable()
        tc.enable_teacache(make_i2v_transformer("token_replace"), 0.15).disable()  # not logged again
        tc.enable_teacache(make_transformer(), 0.15).disable()
        tc.enable_teacache(make_i2v_transformer("token_replace"), 0.15, coefficients=(1.0, 0.0)).disable()
    finally:
        logger.remove(sink)
    assert len(messages) == 1 and "image-to-video" in messages[0] and "--teacache-calibrate" in messages[0]
    # the recommendation for HunyuanVideo's architecture (docs/fidelity.md: its first trained model)
    assert "--teacache-indicator transformation-rate --teacache-skip call --teacache-rule fitted" in messages[0]
    assert tc.model_identity(make_i2v_transformer("token_replace"))["image_condition"] == "token_replace"
    assert "image_condition" not in tc.model_identity(make_transformer())  # text-to-video profiles stay valid


# -- sections (FramePack denoises a video section by section) -------------------------------------------------------

def test_sections_each_start_afresh():
    """Two denoising runs in a row under reset(sections=True): each takes a fresh run's decisions and outputs."""
    model = make_transformer()
    cache = tc.enable_teacache(model, 0.3).reset(STEPS, sections=True)
    with torch.no_grad():
        first = sample(model, make_inputs(seed=0), STEPS)
        second = sample(model, make_inputs(seed=1), STEPS)
    report = cache.report()
    fresh = []
    for seed, out in ((0, first), (1, second)):
        alone = make_transformer()
        single = tc.enable_teacache(alone, 0.3, num_steps=STEPS)
        with torch.no_grad():
            assert torch.equal(sample(alone, make_inputs(seed=seed), STEPS), out)
        fresh.append(single.stats()["computed_steps"])
    assert [s["computed_steps"] for s in report["sections"]] == fresh
    assert [s["section"] for s in report["sections"]] == [0, 1]
    assert "2 section(s) of 12 steps" in cache.summary()
    cache.reset(STEPS)  # without sections a second run is refused, as before
    with torch.no_grad():
        sample(model, make_inputs(), STEPS)
        with pytest.raises(RuntimeError, match="reset"):
            sample(model, make_inputs(), 1)


# -- the CLI on tiny local pipelines ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    made = {kind: make_tiny_pipeline(root / kind, kind) for kind in ("skyreels", "framepack")}
    for condition_type in ("token_replace", "latent_concat"):
        made[f"i2v_{condition_type}"] = make_tiny_pipeline(root / condition_type, "i2v", condition_type)
    return made


#: the single-call image-to-video pipelines, by fixture name
IMAGE_TO_VIDEO = {"skyreels": "HunyuanSkyreelsImageToVideoPipeline",
                  "i2v_token_replace": "HunyuanVideoImageToVideoPipeline",
                  "i2v_latent_concat": "HunyuanVideoImageToVideoPipeline"}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def run(pipeline, save, *extra, frames="5"):
    return tc.main(["--diffusers-model", str(pipeline), "--prompt", "a cat walks on the grass", "--video-size",
                    "32", "32", "--video-length", frames, "--infer-steps", "6", "--seed", "3", "--save-path",
                    str(save), *extra])


def _report(save):
    (video,) = save.glob("*.mp4")
    return video, json.loads(video.with_suffix(".json").read_text())


@pytest.mark.parametrize("kind", list(IMAGE_TO_VIDEO))
def test_cli_threshold_zero_is_the_plain_pipeline(pipelines, image, tmp_path, kind):
    import diffusers
    from diffusers.utils import load_image

    assert run(pipelines[kind], tmp_path, "--image", str(image), "--rel-l1-thresh", "0") == 0
    video, report = _report(tmp_path)
    pipe = getattr(diffusers, IMAGE_TO_VIDEO[kind]).from_pretrained(pipelines[kind])
    frames = pipe(image=load_image(str(image)), prompt="a cat walks on the grass", height=32, width=32,
                  num_frames=5, num_inference_steps=6, guidance_scale=6.0,
                  generator=torch.Generator("cpu").manual_seed(3), output_type="pt").frames[0]
    tc.save_video(frames.permute(1, 0, 2, 3), tmp_path / "plain.mp4")
    assert (iio.imread(video) == iio.imread(tmp_path / "plain.mp4")).all()
    assert report["pipeline"] == IMAGE_TO_VIDEO[kind] and report["skipped_steps"] == []
    if kind.startswith("i2v_"):
        assert report["model"]["image_condition"] == kind[len("i2v_"):]


@pytest.mark.parametrize("kind", list(IMAGE_TO_VIDEO))
def test_cli_true_cfg_decisions_per_branch(pipelines, image, tmp_path, kind):
    assert run(pipelines[kind], tmp_path, "--image", str(image), "--cfg-scale", "3", "--neg-prompt",
               "blurry", "--rel-l1-thresh", "0.3") == 0
    _, report = _report(tmp_path)
    assert report["num_branches"] == 2
    for branch in report["branches"]:
        assert branch["computed_steps"] == reference_computed_steps(branch["rel_l1"], 0.3)
    assert any(branch["skipped_steps"] for branch in report["branches"]), "retune: nothing skipped"


def test_cli_framepack_resets_per_section(pipelines, image, tmp_path):
    """45 frames in windows of 33 (latent window 9): the pipeline denoises 2 sections of 6 steps; each section is
    decided afresh, as the reference would on its own indicator."""
    assert run(pipelines["framepack"], tmp_path, "--image", str(image), "--rel-l1-thresh", "0.3", frames="45") == 0
    _, report = _report(tmp_path)
    sections = report["sections"]
    assert len(sections) >= 2 and all(s["num_steps"] == 6 and s["steps_run"] == 6 for s in sections)
    for s in sections:
        assert s["computed_steps"] == reference_computed_steps(s["rel_l1"], 0.3)
    assert any(s["skipped_steps"] for s in sections)


@pytest.mark.parametrize("extra, message", [
    ([], "--image"),  # image-to-video without a first frame
    (["--image", "/nonexistent.png"], "no such file"),
])
def test_cli_image_errors_come_before_loading(pipelines, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        run(pipelines["skyreels"], tmp_path, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0] and not any(tmp_path.iterdir())
