"""Off-policy estimates of a candidate snapshot on logged lists, and the gate before its canary.

What is estimated (the honest scope). A logged list's propensity is that of its objective
*weights* given the state, p0(w | s), so these estimators evaluate the candidate's **weight
policy** (its weight generator and exploration) on the rankings of the *logged* ranker: the value
of serving the candidate's weights with the ranker that produced the logs, per list, on the
logged states. A ranker change, and a change in which states arise (longer or shorter sessions),
are not estimated: the canary guards those. Outcomes are the lists' clicks and dwell seconds;
a policy's value per objective is per impression, a ratio of sums over lists (each list a unit):

    V_j = E[Y_j] / E[N]      Y_ij: clicks or dwell seconds of list i, N_i: its items shown

Importance ratios r_i = p1(w_i | s_i) / p0(w_i | s_i): p0 is the logged log-propensity, p1 the
density of the logged weights under the target (:func:`model.policy.log_propensity` with the
target actor's logits on the logged state and the target's exploration). A list logged with a
NaN / None propensity was served from a point mass (exactly the generator's weights, no noise):
a target with a density puts probability 0 on that point, so its ratio is exactly 0 (handled, not
dropped: it still counts in the direct-method term of DR). Clipping is off by default (it
biases); the effective sample size ESS = (sum r)^2 / sum r^2 says how many lists the estimate
rests on.

* SNIPS: V_j = sum r_i Y_ij / sum r_i N_i.
* Doubly robust (self-normalized residuals): a_j = mean_i m_ij + sum_i r_i e_ij / sum_i r_i, with
  q_j(s, w) a reward model, m_ij = E_{w ~ target(s_i)} q_j(s_i, w) and e_ij = Y_ij - q_j(s_i, w_i);
  V_j = a_j / a_N (the same for N). q is ridge regression (every outcome at once) on
  [1, x, w', w'^2, x * w'] with x the state (user features and context) and w' the first K - 1
  weights (the last is 1 - their sum), cross-fitted on 2 folds of users (each list's q is fit on
  the other fold's users, so a list's own noise is not in its prediction). q is linear in those
  features, so the target's expectation needs only E[w'] and E[w'^2] per state: a Monte Carlo
  over ``draws`` seeded draws of the target policy (``TargetPolicy.sample``, the serving draw).

Intervals: normal, from the estimators' influence functions (delta method for the ratios, the
reward model held fixed as cross-fitting allows), summed per *user* before squaring
(cluster-robust): lists of one user share the user's tastes and are not independent, and a
list-wise variance would be too small. Chosen over a bootstrap because it is closed form: O(n),
deterministic, cheap enough for the controller to recompute per candidate, and it carries the
pairing of a difference on the same lists for free (the influence of a difference is the
difference of influences). Both rest on the central limit theorem, so heavy-tailed ratios (small
ESS) make either optimistic: the gate does not judge below ``min_ess``. docs/rollout.md
("Off-policy estimates") has the validation in the simulator.

Pure numpy and torch; imports base, schemas and model only.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.featurize import FeatureError, ListView, list_inputs
from model.policy import as_exploration, draw_exploration, log_propensity
from model.scoring import ActorModel, policy_obs
from schemas import Exploration, Impression, ListOutcome

log = logging.getLogger(__name__)

Z95 = 1.959963984540054
"""two-sided 95% normal quantile"""
OUTCOMES = ("click", "dwell")
"""per-list outcomes: clicks and dwell seconds (per impression: CTR and dwell s / impression)"""


# ------------------------------------------------------------------------------------ logged lists
@dataclass(frozen=True)
class LoggedLists:
    """n logged lists as the estimators read them (float64 numpy arrays, one row per list)."""

    outcomes: np.ndarray  # (n, J) per list: clicks, dwell seconds (OUTCOMES order)
    impressions: np.ndarray  # (n,) items shown
    weights: np.ndarray  # (n, K) served objective weights (on the simplex)
    log_propensity: np.ndarray  # (n,) logged log p0(w | s); NaN = served from a point mass
    state: np.ndarray  # (n, d) the reward model's state: user features and context
    clusters: np.ndarray  # (n,) int64 user index: the unit of independence of the intervals
    records: tuple[Impression, ...] = ()  # the logged impressions (for the target's logits)

    def __len__(self) -> int:
        return len(self.impressions)

    @property
    def point_mass(self) -> int:
        """Lists served from a point mass (NaN propensity): their ratio is 0."""
        return int(np.isnan(self.log_propensity).sum())


def logged_lists(outcomes: Sequence[ListOutcome]) -> LoggedLists:
    """The estimators' view of list outcome records (``TOPIC_LIST_OUTCOMES``).

    Records whose objectives or widths (weights, user features, context) are not those of most
    records, or that show no items, are skipped and logged (another schema or objective set;
    never a crash). A missing ``log_propensity`` reads as a point mass (NaN): a node without
    exploration logs none; version-1 records (no propensity at all) should not be passed."""

    def shape(o: ListOutcome) -> tuple[tuple[str, ...], int, int, int]:
        imp = o.impression
        return imp.objectives, len(imp.weights), len(imp.user_features), len(imp.context)

    common = Counter(shape(o) for o in outcomes if o.impression.items).most_common(1)
    _, k, d_user, d_context = common[0][0] if common else ((), len(OUTCOMES), 0, 0)
    keep = [o for o in outcomes if o.impression.items and common and shape(o) == common[0][0]]
    if len(keep) < len(outcomes):
        log.warning(
            "ope: skipped %d of %d list outcomes (no items, or unlike most)",
            len(outcomes) - len(keep),
            len(outcomes),
        )
    n = len(keep)
    users: dict[str, int] = {}
    imps = [o.impression for o in keep]
    return LoggedLists(
        outcomes=np.array(
            [[sum(o.clicks), sum(o.dwell_ms) / 1000.0] for o in keep], dtype=np.float64
        ).reshape(n, len(OUTCOMES)),
        impressions=np.array([len(i.items) for i in imps], dtype=np.float64),
        weights=np.array([i.weights for i in imps], dtype=np.float64).reshape(n, k),
        log_propensity=np.array(
            [math.nan if i.log_propensity is None else i.log_propensity for i in imps], dtype=np.float64
        ),
        state=np.array([(*i.user_features, *i.context) for i in imps], dtype=np.float64).reshape(
            n, d_user + d_context
        ),
        clusters=np.array([users.setdefault(o.user_id, len(users)) for o in keep], dtype=np.int64),
        records=tuple(imps),
    )


# ------------------------------------------------------------------------------------ target policy
@dataclass(frozen=True)
class TargetPolicy:
    """The target's weight policy on the n logged states: its actor's pre-noise logits there,
    its exploration and softmax temperature (what serving would draw from)."""

    logits: torch.Tensor  # (n, K) float64
    exploration: Exploration
    temperature: float = 1.0

    def log_density(self, weights: np.ndarray) -> np.ndarray:
        """log p1(w_i | s_i) (n,) of weights (n, K); ValueError when the target has no density."""
        out = log_propensity(self.logits, torch.from_numpy(weights), self.exploration, self.temperature)
        if out.numel() and torch.isnan(out).all():
            raise ValueError(
                f"exploration: {self.exploration} serves a point mass (no density): importance "
                "ratios are undefined for a target without exploration noise"
            )
        return out.numpy()

    def sample(self, draws: int, seed: int) -> np.ndarray:
        """``draws`` weight draws per state (draws, n, K): the serving head's draw
        (``model.policy.draw_exploration``, then the weights ``SimplexHead.explore`` serves for
        it; its density, which the estimators do not need here, is not computed)."""
        n, k = self.logits.shape
        g = torch.Generator().manual_seed(seed)
        z = self.logits.repeat(draws, 1)  # (draws * n, K)
        draw = draw_exploration(z, self.exploration, g)
        weights = torch.softmax((z + draw.noise) / self.temperature, dim=-1)
        if draw.u is not None:  # uniform rows: Dirichlet(1, ..., 1) = normalized exponentials
            e = -draw.u.log()
            weights = torch.where(draw.uniform.unsqueeze(-1), e / e.sum(-1, keepdim=True), weights)
        return weights.double().reshape(draws, n, k).numpy()


@torch.no_grad()
def target_policy(
    model: ActorModel, exploration: Exploration | float, impressions: Sequence[Impression], batch: int = 2048
) -> TargetPolicy:
    """``model``'s weight generator on the logged impressions' states (the serving path:
    featurize, :func:`model.scoring.policy_obs`, the actor's network). FeatureError (naming the
    field) when an impression does not fit the model."""
    cfg = model.ranker.cfg
    parts = []
    for start in range(0, len(impressions), batch):
        chunk = impressions[start : start + batch]
        views = [
            ListView(
                imp.user_features,
                imp.history,
                imp.context,
                [it.item_id for it in imp.items],
                [it.features for it in imp.items],
            )
            for imp in chunk
        ]
        inputs = list_inputs(views, cfg)
        obs = policy_obs(model.ranker, model.actor.cfg.obs, inputs.user_feats, inputs.history, inputs.context)
        parts.append(model.actor.net(obs).double())
    k = model.actor.cfg.action_dim
    logits = torch.cat(parts) if parts else torch.zeros(0, k, dtype=torch.float64)
    return TargetPolicy(logits, as_exploration(exploration), model.actor.cfg.temperature)


# ------------------------------------------------------------------------------------ estimates
@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    se: float


@dataclass(frozen=True)
class OPEResult:
    """A policy value per objective, per impression, with normal intervals at ``z``."""

    estimator: str  # "on_policy" | "snips" | "dr"
    values: dict[str, Estimate]
    ess: float  # effective sample size of the ratios (n for on_policy)
    n: int
    influence: np.ndarray  # (n, J): value - truth ~ mean of it (intervals and paired differences)
    clusters: np.ndarray  # (n,)
    z: float

    def value(self) -> np.ndarray:
        return np.array([e.value for e in self.values.values()])


def cluster_se(influence: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Cluster-robust standard error of mean(influence) (J,): per cluster sums, squared, with the
    G / (G - 1) small-sample factor; inf with fewer than 2 clusters."""
    n = influence.shape[0]
    ids, inverse = np.unique(clusters, return_inverse=True)
    g = len(ids)
    if g < 2:
        return np.full(influence.shape[1], math.inf)
    sums = np.zeros((g, influence.shape[1]))
    np.add.at(sums, inverse, influence)
    return np.sqrt(g / (g - 1) * (sums**2).sum(0)) / n


def _result(
    name: str, value: np.ndarray, influence: np.ndarray, logged: LoggedLists, ess: float, z: float
) -> OPEResult:
    se = cluster_se(influence, logged.clusters)
    values = {
        j: Estimate(float(v), float(v - z * s), float(v + z * s), float(s))
        for j, v, s in zip(OUTCOMES, value, se, strict=True)
    }
    return OPEResult(name, values, ess, len(logged), influence, logged.clusters, z)


def _check(logged: LoggedLists) -> None:
    if len(logged) == 0:
        raise ValueError("logged: no lists")
    if logged.impressions.sum() <= 0:
        raise ValueError("logged.impressions: no items shown")


def ratios(
    logged: LoggedLists, target_log_density: np.ndarray, clip: float | None = None
) -> tuple[np.ndarray, float]:
    """Importance ratios (n,) scaled by a constant (every use here is self-normalized, so the
    scale is free: exp(log r - max log r) cannot overflow), and the ESS. Point-mass lists get 0.
    ``clip``: cap the *unscaled* ratio (biased; off by default)."""
    log_r = target_log_density - logged.log_propensity
    log_r = np.where(np.isnan(logged.log_propensity), -np.inf, log_r)
    if np.isnan(log_r).any():
        raise ValueError("target log density: NaN on lists with a logged propensity")
    if clip is not None:
        log_r = np.minimum(log_r, math.log(clip))
    top = log_r.max()
    if not np.isfinite(top):
        return np.zeros(len(log_r)), 0.0
    r = np.exp(log_r - top)
    return r, float(r.sum() ** 2 / (r**2).sum())


def on_policy(logged: LoggedLists, z: float = Z95) -> OPEResult:
    """The logging policy's own value on its lists: sum Y / sum N (the incumbent's value)."""
    _check(logged)
    y, n_imp = logged.outcomes, logged.impressions
    value = y.sum(0) / n_imp.sum()
    influence = (y - value * n_imp[:, None]) / n_imp.mean()
    return _result("on_policy", value, influence, logged, float(len(logged)), z)


def snips(
    logged: LoggedLists, target_log_density: np.ndarray, z: float = Z95, clip: float | None = None
) -> OPEResult:
    """Self-normalized importance sampling: V_j = sum r Y_j / sum r N."""
    _check(logged)
    r, ess = ratios(logged, target_log_density, clip)
    y, n_imp = logged.outcomes, logged.impressions
    denom = (r * n_imp).mean()
    if denom <= 0:
        raise ValueError("target: no logged list has a positive ratio (no overlap with the logging policy)")
    value = (r[:, None] * y).mean(0) / denom
    influence = r[:, None] * (y - value * n_imp[:, None]) / denom
    return _result("snips", value, influence, logged, ess, z)


# ------------------------------------------------------------------------------------ reward model
def _features(state: np.ndarray, w_free: np.ndarray, w_free_sq: np.ndarray) -> np.ndarray:
    """[1, x, w', w'^2, x * w'] (n, 1 + d + 2 (K-1) + d (K-1)); linear in (w', w'^2)."""
    n = state.shape[0]
    cross = (state[:, :, None] * w_free[:, None, :]).reshape(n, -1)
    return np.concatenate([np.ones((n, 1)), state, w_free, w_free_sq, cross], axis=1)


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge on standardized columns (the intercept unpenalized): (coef, column mean, column scale)."""
    mu, sd = x.mean(0), x.std(0)
    mu[0], sd[0] = 0.0, 1.0
    sd = np.where(sd > 1e-12, sd, 1.0)
    xs = (x - mu) / sd
    reg = penalty * np.eye(x.shape[1])
    reg[0, 0] = 0.0
    coef = np.linalg.lstsq(xs.T @ xs + reg, xs.T @ y, rcond=None)[0]
    return coef, mu, sd


def doubly_robust(
    logged: LoggedLists,
    target: TargetPolicy,
    *,
    z: float = Z95,
    draws: int = 64,
    penalty: float = 1.0,
    folds: int = 2,
    seed: int = 0,
    clip: float | None = None,
) -> OPEResult:
    """Doubly robust with a cross-fitted ridge reward model (module docstring); ``draws`` target
    draws per state for its expectation, ``seed`` for those draws and the folds."""
    _check(logged)
    log_p1 = target.log_density(logged.weights)
    r, ess = ratios(logged, log_p1, clip)
    if r.sum() <= 0:
        raise ValueError("target: no logged list has a positive ratio (no overlap with the logging policy)")
    targets = np.concatenate([logged.outcomes, logged.impressions[:, None]], axis=1)  # (n, J + 1)
    k = logged.weights.shape[1]
    w_free = logged.weights[:, : k - 1]
    observed = _features(logged.state, w_free, w_free**2)
    sample = target.sample(draws, seed)[:, :, : k - 1]  # (draws, n, K-1)
    expected = _features(logged.state, sample.mean(0), (sample**2).mean(0))
    # folds of users: each list's reward model is fit on the other folds' users
    ids, inverse = np.unique(logged.clusters, return_inverse=True)
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(ids))[inverse] % folds if len(ids) >= folds else np.zeros(len(logged), int)
    q_obs, q_exp = np.empty_like(targets), np.empty_like(targets)
    for f in np.unique(fold):
        test = fold == f
        train = ~test if (~test).any() else test  # one fold (too few users): fit on all
        coef, mu, sd = _ridge(observed[train], targets[train], penalty)
        q_obs[test] = ((observed[test] - mu) / sd) @ coef
        q_exp[test] = ((expected[test] - mu) / sd) @ coef
    resid = targets - q_obs
    r_mean = r.mean()
    resid_w = (r[:, None] * resid).sum(0) / r.sum()
    a = q_exp.mean(0) + resid_w  # (J + 1,) E_target[Y_j], E_target[N]
    psi_a = (q_exp - q_exp.mean(0)) + r[:, None] * (resid - resid_w) / r_mean  # (n, J + 1)
    if a[-1] <= 0:
        raise ValueError("doubly robust: the estimated impressions per list are not positive")
    value = a[:-1] / a[-1]
    influence = (psi_a[:, :-1] - value * psi_a[:, -1:]) / a[-1]
    return _result("dr", value, influence, logged, ess, z)


def relative(candidate: OPEResult, incumbent: OPEResult) -> dict[str, Estimate]:
    """candidate / incumbent - 1 per objective on the same lists, paired (delta method)."""
    v1, v0 = candidate.value(), incumbent.value()
    if (v0 <= 0).any():
        return {j: Estimate(math.nan, -math.inf, math.inf, math.inf) for j in OUTCOMES}
    influence = candidate.influence / v0 - v1 * incumbent.influence / v0**2
    se = cluster_se(influence, candidate.clusters)
    rel = v1 / v0 - 1.0
    z = candidate.z
    return {
        j: Estimate(float(d), float(d - z * s), float(d + z * s), float(s))
        for j, d, s in zip(OUTCOMES, rel, se, strict=True)
    }


# ------------------------------------------------------------------------------------ the gate
@dataclass(frozen=True)
class GateConfig:
    """The OPE gate's settings (the controller's)."""

    max_drop: float = 0.05
    """guard-rail: reject when a guarded objective's DR upper bound of candidate/incumbent - 1 < -max_drop"""
    objectives: tuple[str, ...] = OUTCOMES
    """the guarded objectives (of OUTCOMES)"""
    z: float = Z95
    """normal quantile of the intervals (two-sided 95%: each one-sided bound errs 2.5%)"""
    min_lists: int = 500
    """fewer logged lists: no judgement (the candidate goes to the canary)"""
    min_ess: float = 200.0
    """a smaller effective sample size: no judgement (the intervals would be optimistic)"""
    draws: int = 64
    """target draws per state for the DR reward model's expectation"""
    penalty: float = 1.0
    """ridge penalty of the DR reward model (standardized features)"""
    seed: int = 0
    """seeds the DR draws and folds: the same lists give the same evidence"""


@dataclass(frozen=True)
class GateResult:
    ok: bool
    """False: the candidate never reaches users (decision ``reject_ope``)"""
    evidence: dict[str, float]
    """flat: ope.lists, ope.point_mass_lists, ope.ess, ope.<objective>.<incumbent|snips|dr>[_lo|_hi],
    ope.<objective>.rel_<snips|dr>[_lo|_hi] (relative change vs the incumbent); finite numbers only"""
    reason: str

    def __post_init__(self) -> None:
        # a decision record's evidence holds finite numbers only: an unbounded interval (e.g. one
        # user) or an undefined relative change is left out rather than failing the record
        object.__setattr__(self, "evidence", {k: v for k, v in self.evidence.items() if math.isfinite(v)})


def gate(
    candidate: ActorModel,
    exploration: Exploration | float,
    outcomes: Sequence[ListOutcome],
    cfg: GateConfig | None = None,
) -> GateResult:
    """Judge ``candidate`` (served with ``exploration``) on recent lists the incumbent's weight
    policy served (``outcomes``: its personalized arm, with propensities). Rejected when, for a
    guarded objective, the DR upper bound of the relative change vs the incumbent's value on the
    same lists is below ``-cfg.max_drop``; with too few lists, too small an ESS, a target without
    a density or lists the candidate cannot featurize, it is not judged (ok, left to the canary)."""
    cfg = cfg or GateConfig()
    logged = logged_lists(outcomes)
    evidence: dict[str, float] = {
        "ope.lists": float(len(logged)),
        "ope.point_mass_lists": float(logged.point_mass),
    }
    if len(logged) < cfg.min_lists:
        return GateResult(True, evidence, f"ope: not judged, {len(logged)} lists < min_lists {cfg.min_lists}")
    try:
        target = target_policy(candidate, exploration, logged.records)
        return judge(logged, target, cfg, evidence)
    except (FeatureError, ValueError) as e:  # a candidate that cannot be estimated: the canary decides
        log.warning("ope: candidate not judged: %s", e)
        return GateResult(True, evidence, f"ope: not judged, {e}")


def judge(
    logged: LoggedLists, target: TargetPolicy, cfg: GateConfig, evidence: dict[str, float] | None = None
) -> GateResult:
    """:func:`gate` on arrays: SNIPS and DR per objective vs the logged (incumbent) value."""
    evidence = dict(evidence or {})
    unknown = set(cfg.objectives) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"objectives: {sorted(unknown)} not in {list(OUTCOMES)}")
    incumbent = on_policy(logged, cfg.z)
    s = snips(logged, target.log_density(logged.weights), cfg.z)
    dr = doubly_robust(logged, target, z=cfg.z, draws=cfg.draws, penalty=cfg.penalty, seed=cfg.seed)
    evidence["ope.ess"] = dr.ess
    rel = {"snips": relative(s, incumbent), "dr": relative(dr, incumbent)}
    for j in OUTCOMES:
        for name, res in (("incumbent", incumbent), ("snips", s), ("dr", dr)):
            e = res.values[j]
            evidence.update(
                {f"ope.{j}.{name}": e.value, f"ope.{j}.{name}_lo": e.lo, f"ope.{j}.{name}_hi": e.hi}
            )
        for name, by_objective in rel.items():
            e = by_objective[j]
            evidence.update(
                {
                    f"ope.{j}.rel_{name}": e.value,
                    f"ope.{j}.rel_{name}_lo": e.lo,
                    f"ope.{j}.rel_{name}_hi": e.hi,
                }
            )
    if dr.ess < cfg.min_ess:
        return GateResult(True, evidence, f"ope: not judged, ESS {dr.ess:.0f} < min_ess {cfg.min_ess:.0f}")
    worse = [j for j in cfg.objectives if rel["dr"][j].hi < -cfg.max_drop]
    if worse:
        detail = ", ".join(
            f"{j} {rel['dr'][j].value:+.1%} (upper bound {rel['dr'][j].hi:+.1%})" for j in worse
        )
        return GateResult(
            False, evidence, f"ope: DR estimate below the incumbent by more than {cfg.max_drop:.0%}: {detail}"
        )
    detail = ", ".join(
        f"{j} {rel['dr'][j].value:+.1%} [{rel['dr'][j].lo:+.1%}, {rel['dr'][j].hi:+.1%}]"
        for j in cfg.objectives
    )
    return GateResult(
        True, evidence, f"ope: passed (DR vs incumbent: {detail}; ESS {dr.ess:.0f} of {len(logged)})"
    )
