"""PPO's arithmetic against independent numpy loops on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mova.rl import ppo_math as pm


def _batch(seed: int = 0, B: int = 5, T: int = 9):
    g = np.random.default_rng(seed)
    lengths = g.integers(1, T + 1, size=B)
    lengths[0] = T
    mask = np.zeros((B, T))
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return g, mask, lengths


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_gae_and_returns_match_a_loop():
    g, mask, lengths = _batch()
    rewards, values = g.normal(size=mask.shape), g.normal(size=mask.shape)
    for gamma, lam in [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)]:
        adv, ret = pm.gae(_t(rewards), _t(values), _t(mask), gamma, lam)
        for i, n in enumerate(lengths):
            expected = np.zeros(n)
            acc = 0.0
            for t in range(n - 1, -1, -1):
                v_next = values[i, t + 1] if t + 1 < n else 0.0
                delta = rewards[i, t] + gamma * v_next - values[i, t]
                acc = delta + gamma * lam * acc
                expected[t] = acc
            np.testing.assert_allclose(adv[i, :n].numpy(), expected, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(ret[i, :n].numpy(), expected + values[i, :n], rtol=1e-10, atol=1e-12)
            assert not adv[i, n:].any() and not ret[i, n:].any()
    # lambda = 1, gamma = 1: the advantage is the sum of future rewards minus the value (Monte Carlo)
    adv, _ = pm.gae(_t(rewards), _t(values), _t(mask), 1.0, 1.0)
    i, n = 0, lengths[0]
    np.testing.assert_allclose(adv[i, 0].item(), rewards[i, :n].sum() - values[i, 0], rtol=1e-10)


def test_whitening_matches_numpy_over_masked_tokens():
    g, mask, _ = _batch(1)
    x = g.normal(3.0, 2.0, size=mask.shape)
    sel = x[mask == 1]
    expected = (x - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8)
    out = pm.masked_whiten(_t(x), _t(mask)).numpy()
    np.testing.assert_allclose(out[mask == 1], expected[mask == 1], rtol=1e-9)
    assert not out[mask == 0].any()
    kept = pm.masked_whiten(_t(x), _t(mask), shift_mean=False).numpy()
    np.testing.assert_allclose(kept[mask == 1], expected[mask == 1] + sel.mean(), rtol=1e-9)


def test_running_moments_equal_the_moments_of_everything_seen():
    g = np.random.default_rng(2)
    rm = pm.RunningMoments()
    seen = []
    for n in (7, 1, 30, 4):
        x = g.normal(5.0, 3.0, size=n)
        seen.extend(x)
        batch_mean, batch_std = rm.update(_t(x), global_stats=False)
        assert batch_mean == pytest.approx(x.mean())
        assert batch_std == pytest.approx(x.std())
        assert rm.mean == pytest.approx(np.mean(seen), rel=1e-9)
        assert rm.std == pytest.approx(np.std(seen), rel=1e-6)
    state = rm.state_dict()
    other = pm.RunningMoments()
    other.load_state_dict(state)
    assert other.mean == rm.mean and other.var == rm.var


def test_kl_estimators_match_their_formulas_and_k1_k3_are_unbiased():
    g = np.random.default_rng(3)
    logp, ref = g.normal(-2, 1, size=50), g.normal(-2, 1, size=50)
    np.testing.assert_allclose(pm.kl_k1(_t(logp), _t(ref)).numpy(), logp - ref)
    np.testing.assert_allclose(pm.kl_k2(_t(logp), _t(ref)).numpy(), 0.5 * (logp - ref) ** 2)
    r = np.exp(ref - logp)
    np.testing.assert_allclose(pm.kl_k3(_t(logp), _t(ref)).numpy(), (r - 1) - np.log(r), rtol=1e-9)
    # on samples of p, k1 and k3 average to the exact KL(p || q) of two categoricals
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lq = p.log()[samples], q.log()[samples]
    assert float(pm.kl_k1(lp, lq).mean()) == pytest.approx(exact, abs=3e-3)
    assert float(pm.kl_k3(lp, lq).mean()) == pytest.approx(exact, abs=3e-3)
    assert (pm.kl_k3(lp, lq) >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator"):
        pm.token_kl(lp, lq, "k9")


def test_token_rewards_put_the_score_on_the_last_token():
    g, mask, lengths = _batch(4)
    kl, scores = g.normal(size=mask.shape), g.normal(size=mask.shape[0])
    out = pm.token_rewards(_t(scores), _t(kl), _t(mask), kl_coef=0.05).numpy()
    for i, n in enumerate(lengths):
        expected = -0.05 * kl[i, :n]
        expected[n - 1] += scores[i]
        np.testing.assert_allclose(out[i, :n], expected, rtol=1e-10)
        assert not out[i, n:].any()


def test_score_normalisation_and_clipping():
    g = np.random.default_rng(5)
    first, second = g.normal(2, 4, size=16), g.normal(-1, 2, size=16)
    rm = pm.RunningMoments()
    pm.normalize_scores(_t(first), rm, "normalize", None)
    out = pm.normalize_scores(_t(second), rm, "normalize", clip=0.8).numpy()
    both = np.concatenate([first, second])
    np.testing.assert_allclose(out, np.clip((second - both.mean()) / (both.std() + 1e-8), -0.8, 0.8), rtol=1e-5)
    rm2 = pm.RunningMoments()
    scaled = pm.normalize_scores(_t(first), rm2, "scale", None).numpy()
    np.testing.assert_allclose(scaled, first / (first.std() + 1e-8), rtol=1e-5)
    assert np.array_equal(pm.normalize_scores(_t(first), pm.RunningMoments(), "none", 1.0).numpy(),
                          np.clip(first, -1, 1).astype(np.float32))


def test_advantage_whitening_and_clipping():
    g, mask, _ = _batch(6)
    adv = g.normal(0, 5, size=mask.shape)
    out = pm.process_advantages(_t(adv), _t(mask), whiten=True, clip=1.5, global_stats=False).numpy()
    sel = adv[mask == 1]
    expected = np.clip((adv - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8), -1.5, 1.5)
    np.testing.assert_allclose(out[mask == 1], expected[mask == 1], rtol=1e-9)
    assert not out[mask == 0].any()


def test_clipped_surrogate_matches_a_loop():
    g, mask, _ = _batch(7)
    logp, old, adv = g.normal(-2, 0.3, size=mask.shape), g.normal(-2, 0.3, size=mask.shape), g.normal(size=mask.shape)
    res = pm.policy_loss(_t(logp), _t(old), _t(adv), _t(mask), cliprange=0.2)
    losses, active = [], []
    for i in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[i, t]:
                continue
            r = np.exp(logp[i, t] - old[i, t])
            a = -adv[i, t] * r
            b = -adv[i, t] * min(max(r, 0.8), 1.2)
            losses.append(max(a, b))
            active.append(float(b > a))
    assert float(res.loss) == pytest.approx(np.mean(losses), rel=1e-9)
    assert float(res.clipfrac) == pytest.approx(np.mean(active), rel=1e-9)
    assert float(res.approxkl) == pytest.approx(np.mean(0.5 * (logp - old)[mask == 1] ** 2), rel=1e-9)
    plain = pm.policy_loss(_t(logp), _t(old), _t(adv), _t(mask), cliprange=None)
    assert float(plain.loss) == pytest.approx(np.mean((-adv * np.exp(logp - old))[mask == 1]), rel=1e-9)
    # the gradient vanishes where the ratio is clipped in the advantage's direction
    lp = _t(logp).requires_grad_()
    pm.policy_loss(lp, _t(old), _t(adv), _t(mask), cliprange=0.2).loss.backward()
    r = np.exp(logp - old)
    dead = ((adv > 0) & (r > 1.2)) | ((adv < 0) & (r < 0.8)) | (mask == 0)
    assert not lp.grad.numpy()[dead].any()
    assert lp.grad.numpy()[~dead].all()


def test_value_loss_clipping_matches_a_loop():
    g, mask, _ = _batch(8)
    v, old, ret = g.normal(size=mask.shape), g.normal(size=mask.shape), g.normal(size=mask.shape)
    res = pm.value_loss(_t(v), _t(old), _t(ret), _t(mask), cliprange_value=0.2)
    losses, active = [], []
    for i, t in zip(*np.nonzero(mask)):
        vc = old[i, t] + min(max(v[i, t] - old[i, t], -0.2), 0.2)
        a, b = (v[i, t] - ret[i, t]) ** 2, (vc - ret[i, t]) ** 2
        losses.append(max(a, b))
        active.append(float(b > a))
    assert float(res.loss) == pytest.approx(0.5 * np.mean(losses), rel=1e-9)
    assert float(res.clipfrac) == pytest.approx(np.mean(active), rel=1e-9)
    plain = pm.value_loss(_t(v), _t(old), _t(ret), _t(mask), cliprange_value=None)
    assert float(plain.loss) == pytest.approx(0.5 * np.mean(((v - ret) ** 2)[mask == 1]), rel=1e-9)


def test_entropy_and_token_logprobs():
    g = np.random.default_rng(9)
    logits = g.normal(size=(2, 3, 7))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(pm.entropy_from_logits(_t(logits)).numpy(), -(p * np.log(p)).sum(-1), rtol=1e-5)
    tokens = g.integers(0, 7, size=(2, 3))
    lp = pm.token_logprobs(_t(logits), torch.tensor(tokens)).numpy()
    np.testing.assert_allclose(lp, np.log(np.take_along_axis(p, tokens[..., None], -1)[..., 0]), rtol=1e-5)
