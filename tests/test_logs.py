"""RunLogger: real TensorBoard events, jsonl lines, PNG grids, resume without duplicates."""

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from worldmodels.utils.images import make_grid
from worldmodels.utils.logs import RunLogger, scalar_tag, to_uint8_images

torch.set_num_threads(1)


def _events(run_dir, stage):
    acc = EventAccumulator(str(run_dir / "tb" / stage), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _jsonl(run_dir, stage):
    lines = (run_dir / stage / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_scalar_tags_grouped_like_cleanrl():
    assert scalar_tag("recon_loss") == "losses/recon_loss"
    assert scalar_tag("KL_Loss") == "losses/KL_Loss"
    assert scalar_tag("lr") == "charts/lr"
    assert scalar_tag("val/loss") == "val/loss"


def test_scalars_reach_tensorboard_and_jsonl(tmp_path):
    with RunLogger(tmp_path, "vae") as logger:
        for step in (10, 20, 30):
            logger.log(step, {"val/loss": step / 100}, recon_loss=torch.tensor(step * 1.5),
                       lr=np.float32(1e-3), episodes=step // 10)
        logger.log(40, recon_loss=float("nan"))

    acc = _events(tmp_path, "vae")
    assert set(acc.Tags()["scalars"]) == {"val/loss", "losses/recon_loss", "charts/lr", "charts/episodes"}
    recon = acc.Scalars("losses/recon_loss")
    assert [e.step for e in recon] == [10, 20, 30, 40]
    assert [e.value for e in recon[:3]] == pytest.approx([15.0, 30.0, 45.0])
    assert math.isnan(recon[3].value)
    assert [e.value for e in acc.Scalars("val/loss")] == pytest.approx([0.1, 0.2, 0.3])

    records = _jsonl(tmp_path, "vae")
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert records[1]["losses/recon_loss"] == 30.0 and records[1]["val/loss"] == 0.2
    assert records[1]["charts/episodes"] == 2 and records[1]["charts/lr"] == pytest.approx(1e-3)
    assert records[3]["losses/recon_loss"] is None  # NaN is not JSON
    assert all(r["wall_time"] > 1e9 for r in records)


@pytest.mark.parametrize("dtype", ["float", "uint8", "grey"])
def test_image_grid_png_and_tensorboard(tmp_path, dtype):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 3, 16, 12), dtype=np.uint8)  # (N, 3, H, W)
    if dtype == "float":
        batch = torch.from_numpy(frames).float() / 255.0
    elif dtype == "uint8":
        batch = frames
    else:
        frames = np.repeat(frames[:, :1], 3, axis=1)
        batch = torch.from_numpy(frames[:, :1]).float() / 255.0
    with RunLogger(tmp_path, "vae") as logger:
        path = logger.images("samples/recon", 1500, batch, ncols=3)

    assert path == tmp_path / "vae" / "images" / "samples_recon_0001500.png"
    png = iio.imread(path)
    expected = make_grid(frames.transpose(0, 2, 3, 1), ncols=3)
    assert png.shape == expected.shape == (2 * (16 + 2) + 2, 3 * (12 + 2) + 2, 3)
    np.testing.assert_array_equal(png, expected)  # float -> uint8 rounding is exact here

    images = _events(tmp_path, "vae").Images("samples/recon")
    assert [(e.step, e.height, e.width) for e in images] == [(1500, png.shape[0], png.shape[1])]
    np.testing.assert_array_equal(iio.imread(images[0].encoded_image_string, extension=".png"), png)


def test_to_uint8_images_clips_and_checks_shape():
    out = to_uint8_images(torch.tensor([[[[-1.0, 0.5, 2.0]]] * 3]).to(torch.bfloat16))
    assert out.shape == (1, 1, 3, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        to_uint8_images(np.zeros((2, 8, 8, 3)))


def test_hparams_table_and_json(tmp_path):
    config = {"vae": {"latent_dim": 32, "lr": 1e-4}, "seed": 7, "run": "a|b"}
    with RunLogger(tmp_path, "vae") as logger:
        logger.hparams(config)
    assert json.loads((tmp_path / "vae" / "hparams.json").read_text()) == config
    acc = _events(tmp_path, "vae")
    (tag,) = acc.Tags()["tensors"]
    text = acc.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert text.startswith("|param|value|\n|-|-|\n")
    assert "|vae.latent_dim|32|" in text and "|seed|7|" in text and "a&#124;b" in text


def test_resume_drops_later_lines_events_and_images(tmp_path):
    frames = np.zeros((1, 3, 4, 4), np.uint8)
    with RunLogger(tmp_path, "mdnrnn") as logger:
        for step in range(1, 11):
            logger.log(step, loss=float(step))
        logger.images("dream", 4, frames)
        logger.images("dream", 8, frames)

    # Killed after step 10; the last checkpoint was at step 5.
    with RunLogger(tmp_path, "mdnrnn", resume_step=5) as logger:
        assert [r["step"] for r in _jsonl(tmp_path, "mdnrnn")] == [1, 2, 3, 4, 5]
        for step in range(6, 9):
            logger.log(step, loss=100.0 + step)

    records = _jsonl(tmp_path, "mdnrnn")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["losses/loss"] for r in records] == [1, 2, 3, 4, 5, 106, 107, 108]
    pngs = sorted(p.name for p in (tmp_path / "mdnrnn" / "images").iterdir())
    assert pngs == ["dream_0000004.png"]

    scalars = _events(tmp_path, "mdnrnn").Scalars("losses/loss")
    assert [e.step for e in scalars] == list(range(1, 9))  # purged, nothing twice
    assert [e.value for e in scalars] == [1, 2, 3, 4, 5, 106, 107, 108]


def test_partial_line_from_a_kill_is_dropped(tmp_path):
    with RunLogger(tmp_path, "vae") as logger:
        logger.log(1, loss=1.0)
    with open(tmp_path / "vae" / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "wall_ti')  # killed mid-line
    with RunLogger(tmp_path, "vae") as logger:
        logger.log(2, loss=2.0)
    assert [r["step"] for r in _jsonl(tmp_path, "vae")] == [1, 2]


def test_disabled_logger_writes_nothing(tmp_path):
    logger = RunLogger(tmp_path / "run", "vae", enabled=False)
    logger.log(1, loss=1.0)
    assert logger.images("x", 1, np.zeros((1, 3, 4, 4), np.uint8)) is None
    logger.hparams({"a": 1})
    logger.close()
    assert not (tmp_path / "run").exists()


def test_close_is_idempotent_and_rejects_bad_values(tmp_path):
    logger = RunLogger(tmp_path, "vae")
    with pytest.raises(ValueError, match="scalar"):
        logger.log(1, loss=torch.zeros(2))
    with pytest.raises(TypeError, match="number"):
        logger.log(1, loss="high")
    logger.close()
    logger.close()
    logger.log(2, loss=1.0)  # ignored after close
    assert (tmp_path / "vae" / "metrics.jsonl").read_text() == ""
