"""Separator network, preset registry and checkpoints (tiny preset unless the paper's matters)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clipsep import audio
from clipsep.config import ModelConfig
from clipsep.errors import BadInputError, MissingWeightsError
from clipsep.config import preset_names
from clipsep.model.factory import build_model, load_checkpoint, save_checkpoint
from clipsep.model.losses import separation_loss
from clipsep.model.network import CLIPSepNet, NetConfig

torch.set_num_threads(1)
QUERY_DIM = 16
QUERY_REF = {
    "architecture": "clipsep-tiny",
    "pretrained": None,
    "prompt_templates": ["a photo of {}."],
}


def _tiny(nit: bool = True, seed: int = 0) -> CLIPSepNet:
    torch.manual_seed(seed)
    return build_model(ModelConfig("tiny", nit), QUERY_DIM)


def _batch(n_frames: int = 64, batch: int = 2, seed: int = 0):
    """Two additive warped source magnitudes, their mixture, targets, weights and queries."""
    gen = torch.Generator().manual_seed(seed)
    sources = torch.rand(batch, 2, 256, n_frames, generator=gen) ** 4
    mix = sources.sum(dim=1, keepdim=True)
    queries = torch.randn(batch, 2, QUERY_DIM, generator=gen)
    return mix, queries, audio.binary_masks(sources, mix), audio.loss_weight(mix)


def test_paper_preset_has_the_papers_parameter_count():
    nit = build_model(ModelConfig("paper", True), 512)
    assert sum(p.numel() for p in nit.unet.parameters()) == 30_274_210
    assert sum(p.numel() for p in nit.parameters()) == 30_292_771
    plain = build_model(ModelConfig("paper", False), 512)
    assert sum(p.numel() for p in plain.parameters()) == 30_290_659


@pytest.mark.parametrize("n_frames", [16, 64, 160])
def test_shapes_for_several_lengths_and_masks_in_unit_interval(n_frames):
    model = _tiny().eval()
    mix, queries, _, _ = _batch(n_frames)
    with torch.no_grad():
        out = model(mix, queries)
    assert out.mask_logits.shape == (2, 2, 256, n_frames)
    assert out.noise_logits.shape == (2, 2, 256, n_frames)
    masks = torch.sigmoid(out.mask_logits)
    assert ((masks > 0) & (masks < 1)).all()


def test_fresh_model_predicts_half_everywhere():
    """The paper's tiny init (conv std 1e-3, linear std 1e-4) starts all masks near 0.5."""
    mix, queries, _, _ = _batch()
    with torch.no_grad():
        masks = torch.sigmoid(_tiny().eval()(mix, queries).mask_logits)
    assert (masks - 0.5).abs().max() < 0.05


def test_queries_share_one_unet_pass():
    model = _tiny().eval()
    mix, queries, _, _ = _batch()
    with torch.no_grad():
        together = model(mix, queries).mask_logits
        features = model.features(mix)
        one_by_one = [
            model.masks_from_features(features, queries[:, i : i + 1]).mask_logits for i in range(2)
        ]
    assert torch.allclose(together, torch.cat(one_by_one, dim=1), atol=1e-6)


def test_noise_heads_only_when_asked_and_trained():
    mix, queries, _, _ = _batch()
    assert _tiny(nit=True)(mix, queries, with_noise=False).noise_logits is None
    assert _tiny(nit=False)(mix, queries).noise_logits is None


def test_bad_input_raises_clear_errors():
    model = _tiny()
    mix, queries, _, _ = _batch(n_frames=64)
    with pytest.raises(BadInputError, match="divisible by 2\\*\\*depth = 16"):
        model(mix[..., :50], queries)
    with pytest.raises(BadInputError, match="queries"):
        model(mix, queries[..., :5])


def test_registry_rejects_unknown_preset_listing_known_ones():
    assert {"paper", "small", "tiny"} <= set(preset_names())
    with pytest.raises(BadInputError, match="known presets: .*paper.*small.*tiny"):
        build_model(ModelConfig("huge", True), 512)
    with pytest.raises(ValueError, match="unknown fusion 'film'; known: \\['late'\\]"):
        CLIPSepNet(NetConfig(depth=4, base_channels=4, k=8, fusion="film", nit=False, query_dim=8))


def _learnable_batch(batch: int = 4, n_frames: int = 64):
    """Source 0 dominates the low rows and source 1 the high rows: learnable from the queries."""
    gen = torch.Generator().manual_seed(1)
    low_rows = (torch.arange(256) < 128).float().view(1, 256, 1)
    noise = torch.rand(batch, 2, 256, n_frames, generator=gen)
    sources = torch.stack([noise[:, 0] * (0.1 + low_rows), noise[:, 1] * (1.1 - low_rows)], dim=1)
    mix = sources.sum(dim=1, keepdim=True)
    queries = torch.randn(batch, 2, QUERY_DIM, generator=gen)
    return mix, queries, audio.binary_masks(sources, mix), audio.loss_weight(mix)


def _train_steps(model: CLIPSepNet, steps: int, lr: float = 1e-3) -> list[float]:
    mix, queries, targets, weight = _learnable_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        out = model(mix, queries)
        loss = separation_loss(*out, targets, weight, nit_lambda=0.1, nit_gamma=0.25).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_tiny_net_overfits_one_batch():
    # the paper's tiny init makes the first steps slow; lr 1e-2 gets past them within the budget
    losses = _train_steps(_tiny(nit=False).train(), 40, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0], losses


def test_tiny_nit_net_learns_beyond_leaving_saturation():
    # at init sig(M) + sig(N) = 0.5 + 0.5 saturates min(1, .) and the loss is huge; the drop
    # that matters is the one after the first few steps
    losses = _train_steps(_tiny(nit=True).train(), 40, lr=1e-2)
    assert losses[5] < 0.1 * losses[0] and losses[-1] < 0.85 * losses[5], losses


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, tiny_params):
    model = _tiny(nit=True).train()
    _train_steps(model, 3)  # move weights and BN statistics away from their init
    model.eval()
    path = save_checkpoint(
        tmp_path / "ckpt" / "best.pt",
        model,
        model_cfg=tiny_params.model,
        audio_cfg=tiny_params.audio,
        query=QUERY_REF,
        extra={"step": 3},
    )
    assert not list(path.parent.glob(".*tmp*"))  # atomic write leaves no temp file
    loaded, info = load_checkpoint(path, device="cpu")
    assert not loaded.training
    assert info.model_cfg == tiny_params.model and info.audio_cfg == tiny_params.audio
    assert info.net_cfg == model.cfg and info.query == QUERY_REF and info.extra == {"step": 3}
    mix, queries, _, _ = _batch(seed=5)
    with torch.no_grad():
        expected, got = model(mix, queries), loaded(mix, queries)
    assert torch.equal(expected.mask_logits, got.mask_logits)
    assert torch.equal(expected.noise_logits, got.noise_logits)
    torch.load(path, weights_only=True)  # plain data only


def test_checkpoint_refuses_non_plain_metadata(tmp_path, tiny_params):
    with pytest.raises(BadInputError, match="query.weights"):
        save_checkpoint(
            tmp_path / "x.pt",
            _tiny(),
            model_cfg=tiny_params.model,
            audio_cfg=tiny_params.audio,
            query={"weights": object()},
            extra={},
        )
    assert not (tmp_path / "x.pt").exists()


def test_loading_missing_corrupt_or_foreign_files_fails_clearly(tmp_path):
    with pytest.raises(MissingWeightsError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadInputError, match="corrupt"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": _tiny().state_dict()}, foreign)
    with pytest.raises(BadInputError, match="not a clipsep separator checkpoint"):
        load_checkpoint(foreign)


def test_bf16_autocast_and_channels_last_run():
    model = _tiny().eval().to(memory_format=torch.channels_last)
    mix, queries, _, _ = _batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(mix.contiguous(memory_format=torch.channels_last), queries)
    assert out.mask_logits.shape == (2, 2, 256, 64)
    assert torch.isfinite(out.mask_logits.float()).all()


def test_output_stride_2_equals_fusing_upsampled_features():
    """The CPU preset's head: logits upsampled after the fusion == fusion of upsampled features."""
    torch.manual_seed(0)
    cfg = NetConfig(
        depth=4, base_channels=4, k=8, fusion="late", nit=True, query_dim=QUERY_DIM, output_stride=2
    )
    net = CLIPSepNet(cfg).eval()
    mix, queries, _, _ = _batch(n_frames=32)
    with torch.no_grad():
        out = net(mix, queries)
        features = net.features(mix)
        assert features.maps.shape == (2, 8, 128, 16)  # half resolution
        upsampled = torch.nn.functional.interpolate(
            features.maps, scale_factor=2, mode="bilinear", align_corners=True
        )
        weights = torch.sigmoid(net.fusion.project(queries))
        direct = net.fusion.combine(weights, upsampled)
    assert out.mask_logits.shape == (2, 2, 256, 32) and out.noise_logits.shape == (2, 2, 256, 32)
    assert torch.allclose(out.mask_logits, direct, atol=1e-5)


def test_cpu_preset_is_the_small_network_with_a_cheaper_head():
    small = build_model(ModelConfig("small", True), 512)
    cpu = build_model(ModelConfig("cpu", True), 512)
    assert cpu.cfg.output_stride == 2 and small.cfg.output_stride == 1
    assert sum(p.numel() for p in cpu.parameters()) == sum(p.numel() for p in small.parameters())


def test_cpu_narrow_preset_is_the_cpu_layout_at_three_quarters_width():
    cpu = build_model(ModelConfig("cpu", True), 512)
    narrow = build_model(ModelConfig("cpu-narrow", True), 512)
    three_quarters = [3 * w // 4 for w in cpu.unet.widths]
    assert narrow.unet.widths == three_quarters == [12, 24, 48, 96, 96, 96, 96]
    assert dataclasses.replace(narrow.cfg, base_channels=16) == cpu.cfg
    assert sum(p.numel() for p in narrow.parameters()) == 1_089_883


def _decoder_conv_pixels(net: CLIPSepNet, mix: torch.Tensor, queries: torch.Tensor) -> int:
    """Output pixels of every decoder 3x3 conv in one forward (their cost is proportional)."""
    pixels = []
    hooks = [
        conv.register_forward_hook(lambda _m, _i, out: pixels.append(out[0, 0].numel()))
        for decoder in net.unet.decoders
        for conv in decoder
        if isinstance(conv, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        net(mix, queries)
    for hook in hooks:
        hook.remove()
    assert len(pixels) == len(net.unet.decoders)
    return sum(pixels)


def test_conv_upsample_decoder_has_the_same_parameters_at_a_quarter_of_the_conv_pixels():
    cfg = NetConfig(
        depth=4, base_channels=4, k=8, fusion="late", nit=True, query_dim=QUERY_DIM, output_stride=2
    )
    pix2pix = CLIPSepNet(cfg).eval()
    cheap = CLIPSepNet(dataclasses.replace(cfg, decoder_order="conv-upsample")).eval()
    mix, queries, _, _ = _batch(n_frames=32)
    assert sum(p.numel() for p in cheap.parameters()) == sum(
        p.numel() for p in pix2pix.parameters()
    )
    assert _decoder_conv_pixels(pix2pix, mix, queries) == 4 * _decoder_conv_pixels(
        cheap, mix, queries
    )
    with torch.no_grad():
        assert cheap(mix, queries).mask_logits.shape == pix2pix(mix, queries).mask_logits.shape


def test_unknown_decoder_order_is_refused_naming_the_known_ones():
    cfg = NetConfig(depth=4, base_channels=4, k=8, fusion="late", nit=False, query_dim=8)
    with pytest.raises(ValueError, match="upsample-conv, conv-upsample, got 'deconv'"):
        CLIPSepNet(dataclasses.replace(cfg, decoder_order="deconv"))


def test_cpu_conv_upsample_preset_is_the_cpu_preset_with_its_decoder_convs_first():
    cpu = build_model(ModelConfig("cpu", True), 512)
    reordered = build_model(ModelConfig("cpu-conv-upsample", True), 512)
    assert dataclasses.replace(reordered.cfg, decoder_order="upsample-conv") == cpu.cfg
    assert sum(p.numel() for p in reordered.parameters()) == 1_919_299


def test_noise_heads_read_only_the_source_queries():
    """Extra (absent-sound) queries after the sources change neither the sources' masks nor NIT."""
    net = _tiny().eval()
    mix, queries, _, _ = _batch()
    extra = torch.randn(2, 1, QUERY_DIM)
    with torch.no_grad():
        base = net(mix, queries)
        more = net(mix, torch.cat([queries, extra], dim=1), noise_queries=2)
    assert more.mask_logits.shape[1] == 3
    assert torch.allclose(more.mask_logits[:, :2], base.mask_logits, atol=1e-6)
    assert torch.allclose(more.noise_logits, base.noise_logits, atol=1e-6)


def test_warp_bins_has_one_value_across_presets_and_profiles(tmp_path, tiny_params):
    """audio.warp_bins (training's warp) and each preset's input rows must agree, or be refused."""
    import dataclasses

    from conftest import REPO

    from clipsep.config import load_params
    from clipsep.model.factory import preset_config

    profiles = [None, *sorted(f.stem for f in (REPO / "profiles").glob("*.yaml"))]
    audio_rows = {
        load_params(REPO / "params.yaml", profile=name).audio.warp_bins for name in profiles
    }
    preset_rows = {
        preset_config(name, nit=False, query_dim=QUERY_DIM).warp_bins for name in preset_names()
    }
    assert audio_rows == preset_rows == {256}
    other_front_end = dataclasses.replace(tiny_params.audio, warp_bins=128)
    with pytest.raises(BadInputError, match="warp_bins=256 rows but audio.warp_bins=128"):
        save_checkpoint(
            tmp_path / "x.pt",
            _tiny(),
            model_cfg=tiny_params.model,
            audio_cfg=other_front_end,
            query=QUERY_REF,
        )
    assert not (tmp_path / "x.pt").exists()


def _gated(gate_stride: int, seed: int = 0) -> CLIPSepNet:
    torch.manual_seed(seed)
    cfg = NetConfig(depth=4, base_channels=4, k=8, fusion="late", nit=True, query_dim=QUERY_DIM)
    return CLIPSepNet(dataclasses.replace(cfg, gate_stride=gate_stride, gate_channels=6))


def test_untrained_query_gate_adds_nothing():
    """A fresh gate's FiLM and read-out are zero: the net is its late-fusion twin."""
    gated, plain = _gated(4).eval(), _gated(0).eval()
    missing = plain.load_state_dict(gated.state_dict(), strict=False)
    assert missing.unexpected_keys and all(k.startswith("gate.") for k in missing.unexpected_keys)
    mix, queries, _, _ = _batch(n_frames=32)
    with torch.no_grad():
        assert torch.equal(gated(mix, queries).mask_logits, plain(mix, queries).mask_logits)


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_query_gate_taps_the_decoder_at_its_stride(stride):
    net = _gated(stride).eval()
    mix, queries, _, _ = _batch(n_frames=32)
    with torch.no_grad():
        features = net.features(mix)
    channels = net.unet.tap_channels(stride)
    assert features.tap.shape == (2, channels, 256 // stride, 32 // stride)
    assert channels == {2: 8, 4: 16, 8: 32}[stride]  # skip + upsampled, base 4 doubling


@pytest.mark.parametrize("stride", [1, 3, 16])
def test_query_gate_stride_outside_the_decoder_is_refused(stride):
    with pytest.raises(ValueError, match="tap stride must be a power of 2 in \\[2, 8\\]"):
        _gated(stride)


def test_query_gate_acts_per_query_after_the_shared_pass():
    """A gate whose FiLM scale is query[0] - 1: query (1, ...) adds ReLU(hidden) > 0 somewhere,
    query (0, ...) zeroes the hidden map and is left to late fusion exactly."""
    net = _gated(4).eval()
    channels = net.cfg.gate_channels
    with torch.no_grad():
        net.gate.readout.weight.fill_(1e4)  # the fresh U-Net's activations are ~1e-3
        net.gate.film.weight[:channels, 0] = 1.0  # scale rows read query dim 0
        net.gate.film.bias[:channels] = -1.0
    mix, queries, _, _ = _batch(n_frames=32)
    queries[..., 0] = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        gated = net(mix, queries).mask_logits
        net.gate = None
        plain = net(mix, queries).mask_logits
    assert torch.equal(gated[:, 1], plain[:, 1])
    assert (gated[:, 0] >= plain[:, 0] - 1e-6).all() and (gated[:, 0] > plain[:, 0] + 1e-3).any()


def test_gated_checkpoint_round_trip(tmp_path, tiny_params):
    net = _gated(4).eval()
    with torch.no_grad():
        net.gate.readout.weight.normal_()
    path = save_checkpoint(
        tmp_path / "gated.pt",
        net,
        model_cfg=tiny_params.model,
        audio_cfg=tiny_params.audio,
        query=QUERY_REF,
    )
    loaded, info = load_checkpoint(path)
    assert info.net_cfg.gate_stride == 4 and info.net_cfg.gate_channels == 6
    mix, queries, _, _ = _batch(n_frames=32)
    with torch.no_grad():
        assert torch.equal(loaded(mix, queries).mask_logits, net(mix, queries).mask_logits)
