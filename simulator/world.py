"""The simulated world: users with latent interests and a hidden trade-off, items with topics,
click appeal and depth. A pure function of the config (and its seed): rebuilt, not stored.

Latent quantities (what drives behaviour) and observable features (what a ranker sees) are kept
apart: observables are noisy proxies of the latent ones, so a model can learn them only in part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import SimulatorConfig

# Independent random streams per purpose, so that changing e.g. n_items does not reshuffle users.
STREAM_USERS, STREAM_ITEMS, STREAM_BEHAVIOUR, STREAM_SCHEDULE = 1, 2, 3, 4


def stream(seed: int, purpose: int, *extra: int) -> np.random.Generator:
    """A numpy Generator for one purpose of one seed (SeedSequence keeps them independent)."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *extra]))


def user_id(index: int) -> str:
    return f"user-{index}"


def user_index(uid: str) -> int:
    """The inverse of :func:`user_id`."""
    return int(uid.removeprefix("user-"))


def item_id(index: int) -> str:
    return f"item-{index}"


@dataclass(frozen=True)
class Users:
    interest: np.ndarray  # (U, T) latent topic affinity, standard normal
    alpha: np.ndarray  # (U,) hidden trade-off in [0, 1]: weight of long reads vs click appeal
    features: np.ndarray  # (U, T + 1) observable: noisy interests, noisy trade-off (2 alpha - 1)

    def __len__(self) -> int:
        return int(self.alpha.shape[0])


@dataclass(frozen=True)
class Items:
    topic: np.ndarray  # (I,) int
    bait: np.ndarray  # (I,) latent click appeal, standard normal
    quality: np.ndarray  # (I,) latent depth, standard normal, corr(bait, quality) = rho
    length_s: np.ndarray  # (I,) full read time in seconds
    features: np.ndarray  # (I, T + 3) observable: topic one-hot, noisy bait, noisy quality, log length

    def __len__(self) -> int:
        return int(self.topic.shape[0])


def make_users(cfg: SimulatorConfig) -> Users:
    rng = stream(cfg.seed, STREAM_USERS)
    u, t = cfg.n_users, cfg.n_topics
    interest = rng.standard_normal((u, t))
    alpha = rng.beta(cfg.pref_a, cfg.pref_b, size=u)
    if not cfg.heterogeneous:
        # the same draws are consumed either way, so the control differs from the default world
        # in the trade-off only
        alpha = np.full(u, cfg.pref_mean)
    observed_interest = interest + cfg.interest_noise * rng.standard_normal((u, t))
    observed_alpha = 2.0 * alpha - 1.0 + cfg.pref_noise * rng.standard_normal(u)
    features = np.concatenate([observed_interest, observed_alpha[:, None]], axis=1)
    return Users(interest=interest, alpha=alpha, features=features.astype(np.float32))


def make_items(cfg: SimulatorConfig) -> Items:
    rng = stream(cfg.seed, STREAM_ITEMS)
    n, t = cfg.n_items, cfg.n_topics
    popularity = 1.0 / np.arange(1, t + 1) ** cfg.topic_zipf
    topic = rng.choice(t, size=n, p=popularity / popularity.sum())
    z1, z2 = rng.standard_normal(n), rng.standard_normal(n)
    rho = cfg.bait_quality_corr
    bait = z1
    quality = rho * z1 + np.sqrt(1.0 - rho * rho) * z2
    log_len = (
        np.log(cfg.length_mu_s) + cfg.length_sigma * rng.standard_normal(n) + cfg.length_quality * quality
    )
    length_s = np.exp(log_len)
    one_hot = np.eye(t)[topic]
    proxies = np.stack(
        [
            bait + cfg.item_noise * rng.standard_normal(n),
            quality + cfg.item_noise * rng.standard_normal(n),
            log_len - np.log(cfg.length_mu_s),  # the length of an item is known exactly
        ],
        axis=1,
    )
    features = np.concatenate([one_hot, proxies], axis=1).astype(np.float32)
    return Items(topic=topic, bait=bait, quality=quality, length_s=length_s, features=features)


@dataclass(frozen=True)
class World:
    cfg: SimulatorConfig
    users: Users
    items: Items

    @classmethod
    def build(cls, cfg: SimulatorConfig) -> World:
        return cls(cfg, make_users(cfg), make_items(cfg))

    def affinity(self, user: int, items: np.ndarray) -> np.ndarray:
        """Latent interest a_ui of ``user`` in the topics of ``items`` (n,)."""
        return self.users.interest[user, self.items.topic[items]]
