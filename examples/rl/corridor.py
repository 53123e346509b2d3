"""A slippery corridor and a tabular Q-learning agent, in numpy.

The agent starts in cell 0 of a corridor of ``length`` cells and must reach
the last one (reward +1, episode over); every other step costs 0.01.  It can
step left or right, but with probability ``slip`` the step goes the other way.
The best policy ("always right") earns about 0.9 per episode; a policy that
has learnt nothing walks into the wall and earns -0.5.
"""

from __future__ import annotations

import threading

import numpy as np

from rose.rl import ExperienceBank

LEFT, RIGHT = 0, 1


class Corridor:
    def __init__(self, length: int = 10, slip: float = 0.1, max_steps: int = 50) -> None:
        self.length, self.slip, self.max_steps = length, slip, max_steps

    def step(self, state: int, action: int, rng: np.random.Generator) -> tuple[int, float, bool]:
        move = 1 if action == RIGHT else -1
        if rng.random() < self.slip:
            move = -move
        nxt = min(max(state + move, 0), self.length - 1)
        done = nxt == self.length - 1
        return nxt, (1.0 if done else -0.01), done


class QAgent:
    """Epsilon-greedy behaviour, Q-learning updates replayed over each batch of experience."""

    def __init__(self, env: Corridor, gamma: float = 0.95, lr: float = 0.5, seed: int = 0) -> None:
        self.env, self.gamma, self.lr = env, gamma, lr
        self.q = np.zeros((env.length, 2))
        self.seed = seed
        self._episodes = 0
        self._lock = threading.Lock()  # tasks run in worker threads

    def _greedy(self, state: int) -> int:
        return int(np.argmax(self.q[state]))  # ties go left: an untrained agent learns nothing

    def collect(self, episodes: int, epsilon: float) -> ExperienceBank:
        """Play ``episodes`` with the current policy; return the transitions."""
        with self._lock:
            self._episodes += 1
            rng = np.random.default_rng([self.seed, self._episodes])
            q = self.q.copy()
        rows = []
        for _ in range(episodes):
            s = 0
            for _ in range(self.env.max_steps):
                a = int(rng.integers(2)) if rng.random() < epsilon else int(np.argmax(q[s]))
                s2, r, done = self.env.step(s, a, rng)
                rows.append((s, a, r, s2, done))
                s = s2
                if done:
                    break
        s, a, r, s2, d = map(np.array, zip(*rows, strict=True))
        return ExperienceBank(state=s, action=a, reward=r, next_state=s2, done=d)

    def update(self, bank: ExperienceBank, sweeps: int = 5) -> dict[str, float]:
        """Replay the bank ``sweeps`` times; return the mean absolute TD error of the last sweep."""
        with self._lock:
            errors = np.zeros(len(bank))
            for _ in range(sweeps):
                for i in range(len(bank)):
                    s, a, r = bank["state"][i], bank["action"][i], bank["reward"][i]
                    target = (
                        r
                        if bank["done"][i]
                        else r + self.gamma * self.q[bank["next_state"][i]].max()
                    )
                    errors[i] = target - self.q[s, a]
                    self.q[s, a] += self.lr * errors[i]
            return {"td_error": float(np.abs(errors).mean()), "transitions": len(bank)}

    def evaluate(self, episodes: int = 50, seed: int = 1234) -> dict[str, float]:
        """Mean return and success rate of the greedy policy (fixed seed: comparable across iterations)."""
        rng = np.random.default_rng(seed)
        with self._lock:
            q = self.q.copy()
        returns, successes = [], 0
        for _ in range(episodes):
            s, total = 0, 0.0
            for _ in range(self.env.max_steps):
                s, r, done = self.env.step(s, int(np.argmax(q[s])), rng)
                total += r
                if done:
                    successes += 1
                    break
            returns.append(total)
        return {"reward": float(np.mean(returns)), "success_rate": successes / episodes}
