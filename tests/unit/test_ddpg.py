"""DDPG learns a point-mass control task (tanh head) and state-dependent simplex weights."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator

import pytest
import torch

from learner.ddpg import DDPG, DDPGConfig, QEnsemble, QNetwork
from model.policy import Actor, ActorConfig
from model.runtime import torch_threads


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with torch_threads(1):  # tiny networks: more threads only add barrier waits on a busy machine
        yield


HORIZON = 8
Tensor = torch.Tensor
Transitions = list[Tensor]


@torch.no_grad()
def explore(agent: DDPG, obs: Tensor, std: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """What serving does: the actor's action with exploration noise, (action, noise)."""
    action, noise, _ = agent.actor.explore(obs, std, g)
    return action, noise


def point_mass_rollout(
    agent: DDPG | None, noise: float, n: int, g: torch.Generator
) -> tuple[Transitions, float]:
    """2-D point mass: obs = position - target, action = velocity in [-1, 1]^2, r = -distance."""
    s = torch.rand(n, 2, generator=g) * 2 - 1
    steps: list[Transitions] = []
    ret = torch.zeros(n)
    for t in range(HORIZON):
        a = torch.rand(n, 2, generator=g) * 2 - 1 if agent is None else explore(agent, s, noise, g)[0]
        s2 = s + 0.25 * a
        r = -s2.norm(dim=1)
        steps.append([s, a, r, s2, torch.full((n,), float(t == HORIZON - 1))])
        ret += r
        s = s2
    return [torch.cat(x) for x in zip(*steps, strict=True)], ret.mean().item()


def test_tanh_head_learns_point_mass() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = DDPGConfig(
        obs_dim=2, action_dim=2, head="tanh", hidden=64, critic_hidden=64, gamma=0.9, tau=0.01,
        actor_lr=1e-3, critic_lr=1e-3,
    )  # fmt: skip
    noise = 0.3  # exploration
    agent = DDPG(cfg)
    _, random_return = point_mass_rollout(None, 0.0, 512, g)
    buffer: Transitions = []
    for _ in range(30):
        data, _ = point_mass_rollout(agent, noise, 64, g)
        buffer = (
            data if not buffer else [torch.cat([b, d])[-20000:] for b, d in zip(buffer, data, strict=True)]
        )
        for _ in range(20):
            idx = torch.randint(0, buffer[0].shape[0], (128,), generator=g)
            metrics = agent.update(*[b[idx] for b in buffer])
    _, learned_return = point_mass_rollout(agent, 0.0, 512, g)
    assert set(metrics) >= {"qf_loss", "qf_value", "actor_loss"}
    # random: about -6.6; reaching the target and staying there: about -1
    assert learned_return > random_return + 3.0
    assert learned_return > -2.0


@pytest.mark.parametrize(("critics", "search"), [(1, 0), (3, 0), (1, 32)])
def test_simplex_head_learns_state_dependent_weights(critics: int, search: int) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [-1.0, -1.5]])

    def best(s: torch.Tensor) -> torch.Tensor:
        return torch.softmax(s @ mixing.T, dim=-1)  # the best weights depend on the state

    cfg = DDPGConfig(
        obs_dim=2, action_dim=3, head="simplex", hidden=64, critic_hidden=64, gamma=0.0, tau=0.05,
        actor_lr=1e-3, critic_lr=2e-3, critics=critics, actor_search=search,
    )  # fmt: skip
    noise = 0.5  # exploration
    agent = DDPG(cfg)
    for _ in range(600):  # contextual bandit: done = 1
        s = torch.rand(128, 2, generator=g) * 2 - 1
        a, drawn = explore(agent, s, noise, g)
        assert drawn.abs().sum() > 0
        r = -10 * (a - best(s)).pow(2).sum(-1)
        agent.update(s, a, r, s, torch.ones(128))
    probe = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])
    with torch.no_grad():
        w = agent.actor(probe)
        assert torch.equal(w.argmax(-1), torch.arange(3))
        s = torch.rand(1000, 2, generator=g) * 2 - 1
        err = (agent.actor(s) - best(s)).abs().sum(-1).mean().item()
    uniform_err = (1 / 3 - best(s)).abs().sum(-1).mean().item()
    assert err < 0.4 * uniform_err


def test_heads_respect_their_action_sets() -> None:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(64, 4, generator=g)
    simplex = Actor(ActorConfig(obs_dim=4, action_dim=3, head="simplex", temperature=0.5))
    w, noise, _ = simplex.explore(obs, 1.0, torch.Generator().manual_seed(1))
    assert torch.allclose(w.sum(-1), torch.ones(64)) and (w > 0).all()
    assert torch.allclose(w, torch.softmax((simplex.net(obs) + noise) / 0.5, -1))
    w0, noise0, _ = simplex.explore(obs, 0.0)
    assert torch.equal(noise0, torch.zeros_like(noise0)) and torch.allclose(w0, simplex(obs))
    w_again, noise_again, _ = simplex.explore(obs, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(w, w_again) and torch.equal(noise, noise_again)  # seeded

    tanh = Actor(ActorConfig(obs_dim=4, action_dim=2, head="tanh", action_scale=2.0))
    a, _, _ = tanh.explore(obs, 5.0, g)
    assert a.abs().max() <= 2.0 and (a.abs() == 2.0).any()  # clipped to the bound


@pytest.mark.parametrize("critics", [1, 3])
def test_state_dict_round_trip_and_no_input_mutation(critics: int) -> None:
    torch.manual_seed(0)
    cfg = DDPGConfig(obs_dim=3, action_dim=2, head="simplex", policy_frequency=2, critics=critics)
    g = torch.Generator().manual_seed(0)
    batch = [torch.randn(16, 3, generator=g), torch.softmax(torch.randn(16, 2, generator=g), -1),
             torch.randn(16, generator=g), torch.randn(16, 3, generator=g), torch.zeros(16)]  # fmt: skip
    before = [t.clone() for t in batch]
    agent = DDPG(cfg)
    for _ in range(3):
        agent.update(*batch)
    assert all(torch.equal(a, b) for a, b in zip(batch, before, strict=True))
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    fresh = DDPG(cfg)
    fresh.load_state_dict(torch.load(buf))
    assert agent.update(*batch) == fresh.update(*batch)
    for a, b in zip(agent.actor_target.parameters(), fresh.actor_target.parameters(), strict=True):
        assert torch.equal(a, b)


def test_one_critic_keeps_the_plain_layout_and_an_ensemble_steps_each_member_as_plain_ddpg() -> None:
    """critics=1 is plain DDPG (the checkpoint layout of before ensembles: old checkpoints load);
    with N critics, Q is the members' mean and each member takes the step a lone critic would
    take towards the same TD target."""
    torch.manual_seed(0)
    assert isinstance(DDPG(DDPGConfig(obs_dim=3, action_dim=2)).qf, QNetwork)
    cfg = DDPGConfig(obs_dim=3, action_dim=2, critics=3, critic_lr=1e-2, gamma=0.9)
    agent = DDPG(cfg)
    assert isinstance(agent.qf, QEnsemble) and len(agent.qf.members) == 3
    g = torch.Generator().manual_seed(0)
    obs, next_obs = torch.randn(16, 3, generator=g), torch.randn(16, 3, generator=g)
    action = torch.softmax(torch.randn(16, 2, generator=g), -1)
    reward, done = torch.randn(16, generator=g), torch.zeros(16)
    members = agent.qf.values(obs, action)  # (N, B)
    assert members.shape == (3, 16) and not torch.allclose(members[0], members[1])  # own inits
    assert torch.allclose(agent.qf(obs, action), members.mean(0))
    with torch.no_grad():
        target = reward + cfg.gamma * agent.qf_target(next_obs, agent.actor_target(next_obs))
    lone = copy.deepcopy(agent.qf.members[1])  # a plain critic stepped by hand towards that target
    opt = torch.optim.Adam(lone.parameters(), lr=cfg.critic_lr)
    torch.nn.functional.mse_loss(lone(obs, action), target).backward()
    opt.step()
    metrics = agent.update(obs, action, reward, next_obs, done)
    per_member = (members - target).pow(2).mean().item()
    assert metrics["qf_loss"] == pytest.approx(per_member, rel=1e-5)  # the metric reads per member
    for a, b in zip(agent.qf.members[1].parameters(), lone.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="critics"):
        DDPG(DDPGConfig(critics=0))
    with pytest.raises(ValueError, match="actor_search"):
        DDPG(DDPGConfig(head="tanh", actor_search=8))


class _InteriorQ(torch.nn.Module):
    """A fixed critic whose best second weight is 0.3 for every state: Q = -(w_2 - 0.3)^2."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # the TD step needs a graph; lr 0

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return -((action[:, 1] - 0.3) ** 2) + 0.0 * self.unused

    def values(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self(obs, action).unsqueeze(0)  # the critic's interface: an ensemble of one


@pytest.mark.parametrize(("penalty", "search"), [(0.0, 0), (1e-2, 0), (0.0, 32)])
def test_preactivation_penalty_or_search_brings_a_saturated_actor_back(penalty: float, search: int) -> None:
    """A softmax actor pushed to a corner (logits +-12) gets no gradient of Q back through the
    saturated head: without the penalty it stays at the corner although the critic's optimum is
    inside; with it, the actor returns to where the critic's gradient acts. The search step's
    cross-entropy gradient (mu - best) does not vanish at the corner: it returns without one."""
    torch.manual_seed(0)
    cfg = DDPGConfig(
        obs_dim=3, action_dim=2, hidden=8, critic_lr=0.0, actor_lr=1e-2, preactivation_penalty=penalty,
        actor_search=search,
    )  # fmt: skip
    ddpg = DDPG(cfg)
    last = ddpg.actor.net[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():  # saturate: every state gets weights ~ (0, 1)
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-12.0, 12.0]))
    ddpg.qf, ddpg.qf_target = _InteriorQ(), _InteriorQ()  # type: ignore[assignment]
    ddpg.q_optimizer = torch.optim.Adam(ddpg.qf.parameters(), lr=0.0)  # the critic stays fixed
    obs = torch.randn(64, 3)
    zeros = torch.zeros(64)
    for _ in range(300):
        ddpg.update(obs, torch.full((64, 2), 0.5), zeros, obs, zeros)
    with torch.no_grad():
        w_dwell = float(ddpg.actor(obs)[:, 1].mean())
    if penalty == 0.0 and search == 0:
        assert w_dwell > 0.999  # stuck at the corner
    else:
        assert 0.2 < w_dwell < 0.5  # back near the critic's optimum (0.3)
