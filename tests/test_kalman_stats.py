"""chi2_quantile (runtime code may not use scipy) against scipy."""

from __future__ import annotations

import pytest
from scipy.stats import chi2

from rwkv_swarm.kalman import chi2_quantile


@pytest.mark.parametrize("p", [0.5, 0.9, 0.95, 0.99, 0.999, 0.9999])
def test_one_and_two_dof_quantiles_are_exact(p):
    assert chi2_quantile(p, 1) == pytest.approx(chi2.ppf(p, 1), rel=1e-12)
    assert chi2_quantile(p, 2) == pytest.approx(chi2.ppf(p, 2), rel=1e-12)


@pytest.mark.parametrize("p", [0.9, 0.95, 0.99, 0.999])
@pytest.mark.parametrize(("dof", "rel"), [(3, 2e-2), (10, 6e-3), (100, 4e-4), (10**6, 1e-6)])
def test_wilson_hilferty_is_close_above_two_dof(p, dof, rel):
    assert chi2_quantile(p, dof) == pytest.approx(chi2.ppf(p, dof), rel=rel)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\)"):
        chi2_quantile(1.0, 1)
    with pytest.raises(ValueError, match="dof must be 1 or greater"):
        chi2_quantile(0.5, 0)


@pytest.mark.parametrize("p", [0.9, 0.99, 0.999])
@pytest.mark.parametrize("dof", [0.5, 0.9, 1.0, 2.5, 7.3, 30.0, 1000.0, 5e6])
def test_f1_quantile_is_scipys_f_quantile(p, dof):
    from scipy.stats import f

    from rwkv_swarm.kalman._stats import f1_quantile

    # q = dof (1 - x) / x from x near 1: x's last bit is worth about dof * 1e-16 of q
    assert f1_quantile(p, dof) == pytest.approx(f.ppf(p, 1, dof), rel=max(1e-10, dof * 1e-14))
