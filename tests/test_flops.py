"""FLOPs accounting: the paper's GMACs and torch's GFLOPs for UMT-B/16 at 12 frames."""
from __future__ import annotations

import torch

from vidtldr_pl.backbones import create_model
from vidtldr_pl.flops import count_flops
from vidtldr_pl.flops.report import flops_table, main


def test_umt_b16_flops_msrvtt_schedule():
    res = flops_table("umt_b16", 12, "600,200,100", ["none", "tome", "vidtldr"], "explicit", "meta")
    assert abs(res["none"].gflops - 606.2) < 0.1 and abs(res["none"].gmacs - 303.1) < 0.1
    assert abs(res["vidtldr"].encoder_gmacs - 175.7) < 0.1 and abs(res["vidtldr"].gflops - 355.7) < 0.1
    assert res["tome"].encoder_gmacs == res["vidtldr"].encoder_gmacs
    assert res["tome"].tokens_per_layer == res["vidtldr"].tokens_per_layer == [1752, 1552, 1452] + [1452] * 9


def test_cpu_fused_attention_is_counted():
    """On CPU SDPA dispatches to a flash op that torch's counter misses; we register its formula."""
    enc = create_model("umt_tiny", attention="fused").vision_encoder.eval()
    video = torch.zeros(1, 3, 4, 64, 64)
    fused, _ = count_flops(lambda: enc(video))
    enc.encoder.set_attention("explicit")
    explicit, _ = count_flops(lambda: enc(video))
    assert fused.flops == explicit.flops > 0


def test_report_command(capsys, tmp_path):
    main(["--model", "umt_tiny", "--frames", "4", "--r", "16,8", "--json", str(tmp_path / "f.json")])
    out = capsys.readouterr().out
    assert "vidtldr" in out and "tome" in out and "48 40x3" in out
    assert (tmp_path / "f.json").exists()


def test_count_flops_plain_linear():
    lin = torch.nn.Linear(8, 4)
    report, _ = count_flops(lambda: lin(torch.zeros(3, 8)))
    assert report.flops == 2 * 3 * 8 * 4 and report.merge_flops == 0
