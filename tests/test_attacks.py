"""Attacks: only Byzantine rows change, each does what its definition says."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from innet import attacks
from innet.attacks.data_space import cat_map_index

P, N = 15, 200
BYZ = torch.tensor([0, 4, 9])


@pytest.fixture
def G():
    return torch.randn(P, N, generator=torch.Generator().manual_seed(0))


def gen():
    return torch.Generator().manual_seed(7)


def honest(G):
    mask = torch.ones(P, dtype=torch.bool)
    mask[BYZ] = False
    return G[mask]


@pytest.mark.parametrize("name", [n for n in attacks.NAMES if attacks.get(n).kind == "gradient"])
def test_only_byzantine_rows_change(name, G):
    out = attacks.get(name)(G, BYZ, gen())
    assert torch.equal(honest(out), honest(G))
    assert not torch.equal(out[BYZ], G[BYZ])
    assert torch.equal(attacks.get(name)(G, BYZ[:0], gen()), G)  # f = 0: nothing to do


def test_uniform_is_in_unit_interval(G):
    rows = attacks.get("uniform")(G, BYZ, gen())[BYZ]
    assert rows.min() >= 0 and rows.max() < 1 and abs(float(rows.mean()) - 0.5) < 0.05


def test_scaled_and_constant(G):
    assert torch.allclose(attacks.get("scaled", c=10)(G, BYZ, gen())[BYZ], -10 * G[BYZ])
    assert torch.all(attacks.get("constant", value=-100)(G, BYZ, gen())[BYZ] == -100)


def test_alie_default_z_and_rows(G):
    # REFERENCE §3: z = Φ⁻¹((p−f−s)/(p−f)), s = ⌊p/2+1⌋−f  → 0.21 for p=15, f=3
    assert attacks.alie_z(15, 3) == pytest.approx(norm.ppf(7 / 12))
    assert attacks.alie_z(15, 3) == pytest.approx(0.2104, abs=1e-4)
    H = honest(G).numpy().astype(np.float64)
    rows = attacks.get("alie")(G, BYZ, gen())[BYZ].numpy()
    expected = H.mean(0) + attacks.alie_z(P, 3) * H.std(0)
    np.testing.assert_allclose(rows, np.tile(expected, (3, 1)), rtol=1e-5, atol=1e-6)
    rows = attacks.get("alie", z=1.5)(G, BYZ, gen())[BYZ].numpy()
    np.testing.assert_allclose(rows[0], H.mean(0) + 1.5 * H.std(0), rtol=1e-5, atol=1e-6)


def test_ipm(G):
    rows = attacks.get("ipm", eps=0.5)(G, BYZ, gen())[BYZ]
    assert torch.allclose(rows[1], -0.5 * honest(G).mean(0), atol=1e-6)


def test_bitflip_flips_the_expected_number_of_bits(G):
    prob = 0.01
    out = attacks.get("bitflip", prob=prob)(G, BYZ, gen())
    a = G[BYZ].contiguous().view(torch.int32).numpy().astype(np.uint32)
    b = out[BYZ].contiguous().view(torch.int32).numpy().astype(np.uint32)
    flipped = sum(bin(int(x)).count("1") for x in (a ^ b).ravel())
    expected = prob * 32 * a.size
    assert abs(flipped - expected) < 4 * np.sqrt(expected)


def test_drop_really_zeroes_the_fraction(G):
    rows = attacks.get("drop", fraction=0.3)(G, BYZ, gen())[BYZ]
    zero = float((rows == 0).float().mean())
    assert 0.25 < zero < 0.35
    kept = rows != 0
    assert torch.equal(rows[kept], G[BYZ][kept])


def test_unknown_attack_and_bad_parameter():
    with pytest.raises(ValueError, match="unknown attack 'x'"):
        attacks.get("x")
    with pytest.raises(ValueError, match="fraction"):
        attacks.get("drop", fraction=2.0)
    assert attacks.get("none") is None


def test_cat_map_is_the_arnold_permutation():
    n = 8
    src = cat_map_index(n, 1).numpy()
    assert sorted(src) == list(range(n * n))
    img = np.arange(n * n).reshape(n, n)  # value = y*n + x
    out = img.ravel()[src].reshape(n, n)
    for y in range(n):
        for x in range(n):
            assert out[(x + y) % n, (2 * x + y) % n] == img[y, x]
    # the cat map has a finite period on the N×N torus (6 for N = 8)
    assert np.array_equal(cat_map_index(n, 6).numpy(), np.arange(n * n))


def test_lotka_volterra_warp_is_smooth_and_nontrivial():
    a = attacks.get("lotka_volterra", t=0.5, noise=0.0)
    img = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = a(img, gen())
    assert out.shape == img.shape and torch.isfinite(out).all()
    assert (out - img).abs().mean() > 0.05
    noisy = attacks.get("lotka_volterra", t=0.5, noise=0.2)(img, gen())
    assert 0.1 < float((noisy - out).std()) < 0.3
