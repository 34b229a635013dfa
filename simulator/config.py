"""The simulator's configuration: population, catalog, user behaviour and feature widths.

Every number of the user model lives here (docs/simulator.md gives the equations they enter).
The feature widths are fixed by the config, and :meth:`SimulatorConfig.ranker_config` derives a
matching :class:`model.ranker.RankerConfig`, so a ranker always fits the simulator's lists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is only needed by callers that build a ranker
    from model.ranker import RankerConfig

OBJECTIVES = ("click", "dwell")
CONTEXT_DIM = 3  # depth in the session, clicks and dwell of the previous list
ITEM_PROXIES = 3  # observable clickbait proxy, quality proxy, log length


@dataclass(frozen=True)
class SimulatorConfig:
    seed: int = 0
    """seeds the population, the catalog and every behavioural draw"""

    # ---------------------------------------------------------------- population and catalog
    n_users: int = 500
    n_items: int = 2000
    n_topics: int = 8
    topic_zipf: float = 0.5
    """topic popularity P(t) ~ 1 / (t + 1)^topic_zipf"""
    heterogeneous: bool = True
    """False = control setting: every user has the same trade-off ``pref_mean``"""
    pref_a: float = 0.7
    """hidden trade-off alpha_u ~ Beta(pref_a, pref_b) (0 = click appeal only, 1 = long reads only)"""
    pref_b: float = 0.7
    pref_noise: float = 0.35
    """std of the observable trade-off proxy (on the 2 alpha - 1 scale): partially observable"""
    interest_noise: float = 0.5
    """std of the noise on the observable interest proxies"""
    bait_quality_corr: float = -0.5
    """correlation of clickbait b_i and quality q_i: they partly conflict"""
    item_noise: float = 0.5
    """std of the noise on the observable clickbait and quality proxies"""
    length_mu_s: float = 60.0
    """median full read time of an item (seconds)"""
    length_sigma: float = 0.4
    """log-normal spread of read times"""
    length_quality: float = 0.3
    """log read time grows with quality: long reads are the good ones"""

    # ---------------------------------------------------------------- lists
    n_candidates: int = 20
    """candidates per request (the policy ranks them)"""
    list_len: int = 10
    """items shown: the top list_len of the ranking"""
    history_len: int = 10
    """recently clicked item ids the user carries (request history)"""
    retrieval_temperature: float = 0.5
    """candidates are drawn with P(i) ~ exp(retrieval_temperature * observed interest in topic(i))"""

    # ---------------------------------------------------------------- clicks
    position_decay: float = 0.8
    """P(examine position k) = (k + 1)^-position_decay"""
    max_clicks: int = 3
    """the user stops scanning a list after this many clicks"""
    click_bias: float = -2.0
    click_interest: float = 0.8
    click_bait: float = 1.5
    """clickbait appeal, scaled by (1 - alpha_u)"""
    click_quality: float = 0.8
    """quality appeal, scaled by alpha_u"""

    # ---------------------------------------------------------------- dwell given a click
    read_bias: float = -0.5
    read_interest: float = 0.5
    read_quality: float = 1.0
    """completion rises with quality, scaled by (0.5 + alpha_u): readers read good items to the end"""
    read_bait: float = 0.8
    """clickbait disappoints: completion falls with it"""
    read_noise: float = 0.5
    min_dwell_s: float = 1.0

    # ---------------------------------------------------------------- leaving
    leave_bias: float = -1.0
    leave_satisfaction: float = 5.0
    """P(leave after a list) = sigmoid(leave_bias - leave_satisfaction * S)"""
    dwell_satisfied_s: float = 60.0
    """reading utility U_d = 1 - exp(-dwell seconds of the list / dwell_satisfied_s)"""
    max_lists: int = 20
    """a session ends after this many lists at the latest"""

    # ---------------------------------------------------------------- time
    scan_ms: int = 1500
    """time to look at one item of a list"""
    gap_ms: int = 3000
    """pause between two lists of a session"""

    def __post_init__(self) -> None:
        if self.list_len > self.n_candidates:
            raise ValueError("list_len must be <= n_candidates")
        if self.n_candidates > self.n_items:
            raise ValueError("n_candidates must be <= n_items")
        if min(self.n_users, self.n_items, self.n_topics, self.list_len, self.max_lists) < 1:
            raise ValueError("sizes must be >= 1")
        if not -1.0 < self.bait_quality_corr < 1.0:
            raise ValueError("bait_quality_corr must lie in (-1, 1)")

    # ---------------------------------------------------------------- derived
    @property
    def pref_mean(self) -> float:
        return self.pref_a / (self.pref_a + self.pref_b)

    @property
    def user_dim(self) -> int:
        return self.n_topics + 1  # interest proxies, trade-off proxy

    @property
    def item_dim(self) -> int:
        return self.n_topics + ITEM_PROXIES  # topic one-hot, proxies

    @property
    def context_dim(self) -> int:
        return CONTEXT_DIM

    def control(self) -> SimulatorConfig:
        """The same world with no preference heterogeneity (personalization cannot help)."""
        return dataclasses.replace(self, heterogeneous=False)

    def replace(self, **changes: Any) -> SimulatorConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulatorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown SimulatorConfig fields: {sorted(unknown)}")
        return cls(**data)

    def ranker_config(self, **overrides: Any) -> RankerConfig:
        """A RankerConfig whose input widths match this simulator's features.

        ``list_gru`` is off: the model scores an unordered candidate set at serving time and the
        ranked top of it in training, so a GRU over input positions would see different orders.
        """
        from model.ranker import RankerConfig

        size = dict(d_model=32, n_heads=2, n_layers=1, ffn_mult=2)
        buckets = 1 << max(10, (4 * self.n_items - 1).bit_length())  # few id collisions
        base = RankerConfig(
            user_dim=self.user_dim,
            item_dim=self.item_dim,
            context_dim=self.context_dim,
            hash_buckets=buckets,
            history_len=self.history_len,
            max_list_len=self.n_candidates,
            list_gru=False,
            objectives=OBJECTIVES,
            **size,
        )
        return dataclasses.replace(base, **overrides)
