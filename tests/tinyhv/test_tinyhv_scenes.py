"""The second tiny model (tinyhv.scenes + TinyHunyuanVideo15): its data, its judge against ground truth, its
shipped weights in HunyuanVideo 1.5's architecture, TeaCache on it, and its resumable training."""

import json

import numpy as np
import pytest
import torch

import teacache_sample_video as tc
from tinyhv import scenes
from tinyhv.evaluate_scenes import describe, reading, score
from tinyhv.metrics import psnr
from tinyhv.model import SCENES_ASSETS, TinyHunyuanVideo15

PROMPT = "a red circle and a blue square cross horizontally quickly camera left"  # a held-out pair


def _clip(scene, seed=0, **layout):
    """One rendered clip (T, H, W, 3) in [0, 1]; ``layout``: ``starts`` (2, 2) and/or ``textures`` to fix them."""
    g = torch.Generator().manual_seed(seed)
    starts = layout.get("starts", scenes.random_layout([scene], g)[0])[None]
    textures = layout.get("textures", scenes.random_textures(1, g)[0])[None]
    return ((scenes.render_batch([scene], starts, textures)[0] + 1) / 2).clamp(0, 1)


# -- data ---------------------------------------------------------------------- #

def test_grammar_split_and_held_out_pairs():
    train, held = scenes.split()
    assert len(train) + len(held) == len(scenes.all_scenes()) == (4 * 3) * (3 * 3) * 2 * 2 * 3
    assert {s.pair for s in held} == set(scenes.HELD_OUT_PAIRS) and not {s.pair for s in train} & {
        s.pair for s in held}
    # every (colour, shape) of a held-out pair is seen in training, in the same role
    assert {(s.colour1, s.shape1) for s in held} <= {(s.colour1, s.shape1) for s in train}
    assert {(s.colour2, s.shape2) for s in held} <= {(s.colour2, s.shape2) for s in train}
    s = scenes.parse_prompt(PROMPT)
    assert s.prompt == PROMPT and s in held
    for bad in ("a red circle moves left", PROMPT.replace("blue", "red"), PROMPT.replace("quickly", "fast")):
        with pytest.raises(ValueError):
            scenes.parse_prompt(bad)


def test_objects_stay_in_frame_and_move_as_captioned():
    train, _ = scenes.split()
    chosen = train[::13]
    starts = scenes.random_layout(chosen, torch.Generator().manual_seed(3))
    h = scenes.OBJECT_PX / 2
    for s, (first, second) in zip(chosen, starts):
        d = torch.tensor(scenes.AXES[s.axis]) * scenes.SPEEDS[s.speed]
        for start, end in ((first, first + d), (second, second - d)):
            for p in (start, end):
                assert (p >= h - 1e-5).all() and (p <= torch.tensor([scenes.WIDTH, scenes.HEIGHT]) - h + 1e-5).all()


def test_background_is_a_new_texture_per_clip_and_pans_with_the_camera():
    g = torch.Generator().manual_seed(2)
    textures = scenes.random_textures(1, g)[0]
    starts = scenes.random_layout([scenes.parse_prompt(PROMPT)], g)[0]
    pan = int(scenes.PAN_PX)
    for camera, shift in (("left", pan), ("right", -pan), ("still", 0)):  # left: the background slides right
        clip = _clip(scenes.parse_prompt(PROMPT.replace("left", camera)), starts=starts, textures=textures)
        first, last = clip[0], clip[-1]
        w = first.shape[1]
        a, b = slice(max(0, -shift), w - max(0, shift)), slice(max(0, shift), w - max(0, -shift))
        grey = (first[:, a].std(-1) < 1e-6) & (last[:, b].std(-1) < 1e-6)  # background in both frames
        assert grey.float().mean() > 0.5
        assert torch.allclose(last[:, b][grey], first[:, a][grey], atol=1e-5), camera
        assert first[..., 0][first.std(-1) < 1e-6].std() > 0.05  # textured, not flat
        assert describe(clip)["camera_shift_px"] == shift
    other = _clip(scenes.parse_prompt(PROMPT), seed=1)
    assert (clip[0] - other[0]).abs().mean() > 0.05  # texture and layout differ with the seed


# -- the judge ----------------------------------------------------------------- #

def test_judge_reads_rendered_clips_right():
    """Ground truth: every combination of the held-out split and a spread of the training split."""
    train, held = scenes.split()
    wanted = held + train[::7]
    videos = ((scenes.render(wanted, torch.Generator().manual_seed(0)) + 1) / 2).clamp(0, 1)
    result = score(list(videos), wanted)
    misses = [r for r in result["samples"] if not all(r["ok"].values())]
    # the only misses allowed: a first object that the second hides in part in every frame (slow crossings)
    assert result["accuracy"]["all seven"] >= 0.99, misses
    assert all(k.startswith("colour") or r["ok"][k] for r in misses for k in ("axis", "speed", "camera")), misses


def test_judge_tells_each_field_apart():
    """Changing one field of the caption, layout and texture kept, changes what the judge reads in that field."""
    base = scenes.parse_prompt(PROMPT)
    g = torch.Generator().manual_seed(5)
    starts, textures = scenes.random_layout([base], g)[0], scenes.random_textures(1, g)[0]
    assert reading(_clip(base, starts=starts, textures=textures)) == base
    for field, value in (("colour1", "green"), ("shape2", "triangle"), ("camera", "right"), ("camera", "still")):
        changed = scenes.Scene(**{**base.__dict__, field: value})
        seen = reading(_clip(changed, starts=starts, textures=textures))
        assert seen == changed, (field, value, seen)
    # swapping the objects' roles swaps what the judge calls first and second
    swapped = scenes.Scene(base.colour2, base.shape2, base.colour1, base.shape1, base.axis, base.speed, base.camera)
    assert reading(_clip(swapped, seed=7)) == swapped


def test_judge_finds_nothing_in_a_blank_or_one_object_clip():
    blank = torch.full((8, 32, 32, 3), 0.5)
    assert reading(blank) is None and describe(blank)["objects"] == {}
    one = _clip(scenes.parse_prompt(PROMPT))
    grey = one.mean(-1, keepdim=True).expand_as(one).clone()
    blue = (one[..., 2] - one[..., 0]) > 0.3  # keep only the blue square
    grey[blue] = one[blue]
    d = describe(grey)
    assert list(d["objects"]) == ["blue"] and d["colour1"] is None and d["camera"] == "left"


# -- the shipped weights --------------------------------------------------------- #

@pytest.fixture(scope="module")
def model():
    return TinyHunyuanVideo15.from_pretrained()


def test_shipped_weights_and_config():
    from safetensors.torch import load_file

    assert SCENES_ASSETS.exists() and SCENES_ASSETS.stat().st_size <= 20 * 2 ** 20
    config = json.loads(SCENES_ASSETS.with_suffix(".json").read_text())
    training = config["training"]
    assert training["steps_done"] > 0 and "tinyhv.train --model scenes" in training["command"]
    assert {"seed", "machine", "wall_clock_s", "final_train_loss", "final_heldout_val_loss"} <= set(training)
    assert [tuple(p) for p in config["data"]["held_out_pairs"]] == list(scenes.HELD_OUT_PAIRS)
    state = load_file(str(SCENES_ASSETS))
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert any(k.startswith("transformer.transformer_blocks.") for k in state)
    assert not any("single_transformer_blocks" in k for k in state)  # 1.5: dual-stream blocks only


def test_loads_into_diffusers_hunyuanvideo15_and_generates(model):
    from diffusers import HunyuanVideo15Transformer3DModel

    assert type(model.transformer) is HunyuanVideo15Transformer3DModel
    assert all(p.dtype == torch.float32 for p in model.parameters())
    a = model.generate(PROMPT, seed=3, num_steps=6)
    assert a.shape == (8, 32, 32, 3) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, model.generate(PROMPT, seed=3, num_steps=6))
    assert not torch.equal(a, model.generate(PROMPT, seed=4, num_steps=6))


@pytest.mark.parametrize("cfg_scale", [None, 1.0])
def test_one_transformer_call_per_step_with_1_5s_conditioning(model, cfg_scale):
    """The shipped sampling config guides (cfg 3) as 1.5's repo does: prompt and empty prompt batched in one call
    per step; cfg 1 calls with the prompt alone."""
    assert model.config["sampling"]["cfg_scale"] == 3.0
    seen = []
    hook = model.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        model.generate(PROMPT, seed=0, num_steps=3, cfg_scale=cfg_scale)
    finally:
        hook.remove()
    assert len(seen) == 3
    kw = seen[0]
    batch = 1 if cfg_scale == 1.0 else 2
    assert kw["hidden_states"].shape == (batch, 7, 8, 32, 32) and not kw["hidden_states"][:, 3:].any()
    assert not kw["encoder_attention_mask_2"].any() and not kw["image_embeds"].any()  # text-to-video, no glyphs
    if batch == 2:  # the same latents, the prompt's tokens against the empty prompt's
        assert torch.equal(kw["hidden_states"][0], kw["hidden_states"][1])
        assert kw["encoder_attention_mask"][0].sum() > kw["encoder_attention_mask"][1].sum()


def test_teacache_on_the_second_model(model):
    steps = 12
    plain = model.generate(PROMPT, seed=0, num_steps=steps)
    cache = tc.enable_teacache(model.transformer, 0.5, coefficients=(1.0, 0.0))
    try:
        cached = model.generate(PROMPT, seed=0, num_steps=steps, cache=cache)
        stats = cache.stats()
    finally:
        cache.disable()
    assert stats["skipped_steps"] and {0, steps - 1} <= set(stats["computed_steps"]), stats
    assert not torch.equal(cached, plain) and psnr(cached, plain) > 15
    assert torch.equal(model.generate(PROMPT, seed=0, num_steps=steps), plain)  # disable() restored it


def test_sample_follows_a_held_out_prompt_but_its_shapes(model):
    """A held-out prompt, 30 steps, the shipped sampling config (cfg 3): the judge reads the colours, the axis, the
    speed and the camera asked for. (Shapes are the model's weak field: it meets its quality bar, all seven fields in
    80% of held-out samples, only in part; tinyhv.evaluate_scenes measures it.)"""
    wanted = scenes.parse_prompt(PROMPT)
    d = describe(model.generate(PROMPT, seed=1000, num_steps=30))
    assert len(d["objects"]) == 2, d
    assert {k: d[k] for k in ("colour1", "colour2", "axis", "speed", "camera")} == {
        k: getattr(wanted, k) for k in ("colour1", "colour2", "axis", "speed", "camera")}, d


# -- training ------------------------------------------------------------------- #

def test_training_resumes_where_it_stopped(tmp_path):
    from safetensors.torch import load_file

    from tinyhv import train

    common = ["--model", "scenes", "--batch-size", "2", "--threads", "1", "--log-every", "1", "--ckpt-every", "2",
              "--warmup", "2"]
    sample = ["--prediction", "sample"]
    assert train.main([*common, *sample, "--steps", "4", "--out", str(tmp_path / "straight")]) == 0
    assert train.main([*common, *sample, "--steps", "2", "--out", str(tmp_path / "split")]) == 0
    with pytest.raises(SystemExit, match="--prediction velocity: .*predicts sample"):
        train.main([*common, "--prediction", "velocity", "--steps", "4", "--resume", "--out", str(tmp_path / "split")])
    # resumed without --prediction: the run keeps its target (another one would not match bit for bit)
    assert train.main([*common, "--steps", "4", "--resume", "--out", str(tmp_path / "split")]) == 0
    name = SCENES_ASSETS.name
    a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "split" / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "split" / name).with_suffix(".json").read_text())
    assert config["training"]["steps_done"] == 4 and [c["from_step"] for c in config["training"]["commands"]] == [
        0, 2]
    assert config["prediction"] == "sample"
    with pytest.raises(SystemExit, match="--model scenes run"):
        train.main(["--steps", "6", "--resume", "--batch-size", "2", "--out", str(tmp_path / "split")])
    assert np.isfinite(config["training"]["final_train_loss"])


def test_training_warm_starts_from_exported_weights(tmp_path):
    """``--init``: model and EMA from an export, the optimizer fresh; at learning rate 0 the export is unchanged,
    and the new sidecar keeps the earlier run's record."""
    from safetensors.torch import load_file

    from tinyhv import train

    common = ["--model", "scenes", "--batch-size", "2", "--threads", "1", "--log-every", "1", "--ckpt-every", "2",
              "--warmup", "1"]
    name = SCENES_ASSETS.name
    assert train.main([*common, "--prediction", "sample", "--steps", "2", "--out", str(tmp_path / "first")]) == 0
    first = tmp_path / "first" / name
    assert train.main([*common, "--steps", "2", "--lr", "0", "--init", str(first), "--out",
                       str(tmp_path / "warm")]) == 0
    a, b = load_file(str(first)), load_file(str(tmp_path / "warm" / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sidecar = json.loads((tmp_path / "warm" / name).with_suffix(".json").read_text())
    assert sidecar["prediction"] == "sample"  # the export's target, not --prediction's default
    with pytest.raises(SystemExit, match="--prediction velocity: .*predicts sample"):
        train.main([*common, "--prediction", "velocity", "--steps", "2", "--init", str(first), "--out",
                    str(tmp_path / "other")])
    record = sidecar["training"]
    assert record["init"]["weights"] == str(first) and record["init"]["training"]["steps_done"] == 2
    assert train.main([*common, "--steps", "4", "--init", str(first), "--out", str(tmp_path / "moved")]) == 0
    c = load_file(str(tmp_path / "moved" / name))
    assert any(not torch.equal(a[k], c[k]) for k in a)  # a real learning rate does train it
    with pytest.raises(SystemExit, match="--init"):
        train.main([*common, "--steps", "4", "--init", str(first), "--resume", "--out", str(tmp_path / "warm")])
    with pytest.raises(SystemExit, match="needs the .safetensors"):
        train.main([*common, "--steps", "4", "--init", str(tmp_path / "none.safetensors"), "--out",
                    str(tmp_path / "x")])


def test_evaluate_scenes_command_on_ground_truth(tmp_path, capsys):
    from tinyhv import evaluate_scenes

    out = tmp_path / "r.json"
    assert evaluate_scenes.main(["--ground-truth", "--split", "both", "--max-combos", "3", "--threads", "1",
                                 "--json", str(out), "--grid", str(tmp_path / "g.png"), "--grid-rows", "2"]) == 0
    result = json.loads(out.read_text())
    assert result["held-out"]["n"] == result["train"]["n"] == 3
    assert result["held-out"]["accuracy"]["all seven"] == 1.0
    assert len(result["held-out"]["grid_prompts"]) == 2 and (tmp_path / "g.png").is_file()
    assert "bar (all seven >= 80%): PASS" in capsys.readouterr().out
