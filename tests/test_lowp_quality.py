"""The README's bfloat16 training claim: the digits MLP with param, grad and state all in
bfloat16 and stochastic rounding ends within 1 percentage point of float32 validation accuracy;
with nearest rounding, Adam at lr 1e-4 (updates below half an ulp) does not train."""
import pytest

from lrcore.demo import lowp_quality


@pytest.mark.slow
@pytest.mark.parametrize("cfg", lowp_quality.CONFIGS, ids=lambda c: c["rule"])
def test_bfloat16_stochastic_within_one_point_of_float32(cfg):
    res = lowp_quality.compare(epochs=40, **cfg)
    f32, sr, near = res["float32"][-1], res["bfloat16-sr"][-1], res["bfloat16-nearest"][-1]
    assert f32 > 0.9
    assert abs(sr - f32) <= 0.01
    if cfg["rule"] == "adam":
        assert near < f32 - 0.5     # updates smaller than half an ulp vanish
