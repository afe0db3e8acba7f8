"""Reinforcement learning: a gymnasium trading environment and a small actor-critic agent.

No RL library: the well-kept ones (Stable-Baselines3, CleanRL, TorchRL) are built on
PyTorch, which this stack does not install (gigabytes), and TF-Agents is
unmaintained. The agent is an advantage actor-critic (A2C with GAE) of about a
hundred lines: TensorFlow computes the gradients in ``fit``; everything else,
rollouts included, runs the policy in numpy.

Environment (`TradingEnv`)
--------------------------
* Observation at bar t: the model-input row ``X[t]`` (models.dataset.model_inputs)
  followed by the position currently held, as float32. The Box bounds are the
  data's own per-column minimum and maximum (the env never emits anything else;
  infinite bounds would draw warnings from gymnasium's checker), the position's [-1, 1].
* Action: Discrete(3), the target position: 0 short (-1), 1 flat (0), 2 long (+1).
  The action index is the class index of the other models (0 down, 1 flat, 2 up),
  so a policy's action probabilities are a down/flat/up forecast as they stand.
* Reward for the step t -> t+1: the change in equity after fees,
  ``position * r[t] - fee * |position - previous position|`` with
  ``r[t] = close[t+1] / close[t] - 1``. Equity is counted in units of one fixed
  notional (the strategy trades about ``[strategy] notional`` per position), so it adds up:
  ``equity = sum of rewards``. ``fee`` is a fraction of the notional per unit of
  position changed: the taker fee plus slippage, ``(fee_bps + slippage_bps) / 1e4``
  (0.0012 with the default [execution]); going from short to long pays it twice.
  The position held when an episode ends is not closed (no exit fee is charged).
* Episodes: random windows of ``episode_length`` steps (start drawn from the env's
  seeded generator) or, with ``episode_length=None``, the whole series. An episode
  ends by truncation (``truncated=True``): running out of window is a time limit, not
  a terminal state, so the agent bootstraps from the value of the last observation.
  ``reset(options={"start": i})`` starts at bar i (tests, evaluation).

Prices: `TradingEnv` and `RLAgent.fit` take the bar closes (``close=``, one per row
of X) or the one-bar forward returns (``future_return=``, ``r[t] = close[t+1] /
close[t] - 1``, e.g. ``Dataset.future_return`` built with ``horizon=1``). Either way
n rows give n - 1 steps: the last row is only the final observation. Not
``Dataset.future_return`` with a horizon above 1: that return spans several bars.
Rows a dataset dropped inside the series (NaN inputs) make a step span more than
one bar; its reward is still what holding the position over it earned.

Agent (`RLAgent`)
-----------------
* Policy: MLP ``[standardised X row, position] -> hidden (tanh) ... -> 3 logits ->
  softmax``; standardisation (the training rows' mean and standard deviation) is
  part of the policy, because the model inputs mix scales (RSI in 0..100, relative
  distances around 1e-3). A separate critic MLP of the same shape estimates the
  state value; it is used in training only and not saved.
* Training: for each update, ``episodes_per_update`` episodes are played with
  actions sampled from the policy (numpy); advantages by GAE(gamma, lambda) with the
  critic; one Adam step on ``policy loss - entropy_coef * entropy + value_coef *
  value loss`` (gradient norm clipped), advantages normalised per batch, rewards
  multiplied by ``reward_scale`` for the critic's sake (hourly returns are ~1e-2).
  ``episodes`` episodes in all. The label ``y`` is not used (the reward is).
* Seeds: the weights start from numpy's seeded generator (Glorot uniform, zero
  biases), the env and the action sampling from ``seed`` too, and TensorFlow draws
  no random numbers, so the same seed gives the same weights: on this CPU bit for
  bit (the tests check it); TensorFlow does not promise bitwise equal float sums
  across machines or thread counts.
* Serving: after fit the policy weights are numpy arrays and `action_proba` /
  `predict_proba` run the MLP in numpy (float64; TensorFlow's float32 forward pass
  agrees within 1e-5). TensorFlow is imported inside ``fit`` only: loading and
  predicting need numpy (and gymnasium, for this module's env class).
* `predict_proba(X)`: the action probabilities for observations built from X with
  position 0 (flat). The ensemble scores symbols statelessly, from the features
  alone, so the agent answers as if it held nothing: "what would you do from flat".
  `action_proba(X, position)` gives the answer for another position.

Missing values are refused (ValueError) in the env, ``fit`` and ``predict_proba``,
as by the tree models.
"""
from __future__ import annotations

import json
import operator
from pathlib import Path

import gymnasium as gym
import numpy as np

from models.forest import check_X as check_rows_of
from models.tfruntime import tensorflow

N_ACTIONS = 3                        # short / flat / long = down / flat / up
POSITIONS = np.array([-1.0, 0.0, 1.0])
DEFAULT_FEE = (10.0 + 2.0) / 1e4     # [execution] fee_bps + slippage_bps, per unit changed
DEFAULTS = dict(hidden=[32, 32], episodes=200, episode_length=128, episodes_per_update=4,
                gamma=0.9, gae_lambda=0.95, learning_rate=3e-3, entropy_coef=0.01,
                value_coef=0.5, max_grad_norm=0.5, reward_scale=100.0, fee=DEFAULT_FEE)
ARRAYS = "policy.npz"
PARAMS = "params.json"


def check_X(X, n_features: int | None = None) -> np.ndarray:
    return check_rows_of(X, n_features, who="the RL agent")


def step_returns(n_rows: int, close=None, future_return=None) -> np.ndarray:
    """The n_rows - 1 one-step returns ``close[t+1] / close[t] - 1`` from exactly one of
    ``close`` (n_rows prices) or ``future_return`` (n_rows one-bar forward returns;
    the last, which would need the bar after the data, is not used and may be NaN)."""
    if (close is None) == (future_return is None):
        raise ValueError("give the prices as exactly one of close= (bar closes) or "
                         "future_return= (one-bar forward returns): rewards need them")
    if close is not None:
        close = np.asarray(close, dtype=np.float64)
        if close.shape != (n_rows,):
            raise ValueError(f"close must have shape ({n_rows},), one per row of X, "
                             f"got {close.shape}")
        if not (np.isfinite(close).all() and (close > 0).all()):
            raise ValueError("close must be finite and > 0 (NaN refused)")
        r = close[1:] / close[:-1] - 1.0
    else:
        fr = np.asarray(future_return, dtype=np.float64)
        if fr.shape != (n_rows,):
            raise ValueError(f"future_return must have shape ({n_rows},), one per row of X, "
                             f"got {fr.shape}")
        r = fr[:-1]
        if not np.isfinite(r).all():
            raise ValueError("future_return contains NaN or infinity (only the last, unused, "
                             "value may be NaN)")
    if len(r) < 1:
        raise ValueError("a trading environment needs at least 2 rows")
    return np.ascontiguousarray(r)


class TradingEnv(gym.Env):
    """One instrument, position in {-1, 0, +1}, reward = change in equity after fees
    (see the module docstring). ``info`` holds ``equity`` (since reset), ``position``,
    ``t`` (the bar of the observation) and ``fees`` (paid since reset)."""

    metadata = {"render_modes": []}

    def __init__(self, X, close=None, future_return=None, fee: float = DEFAULT_FEE,
                 episode_length: int | None = None):
        X = check_X(X)
        self.returns = step_returns(len(X), close, future_return)
        X32 = X.astype(np.float32)
        if not np.isfinite(X32).all():
            raise ValueError("X has values beyond float32's range")
        if not (np.isfinite(fee) and fee >= 0):
            raise ValueError(f"fee must be a fraction >= 0, got {fee}")
        self.n_steps = len(self.returns)
        if episode_length is not None and not 1 <= episode_length:
            raise ValueError(f"episode_length must be >= 1 or None, got {episode_length}")
        self.X = X32
        self.fee = float(fee)
        self.episode_length = (self.n_steps if episode_length is None
                               else min(int(episode_length), self.n_steps))
        low = np.append(X32.min(axis=0), np.float32(-1.0))
        high = np.append(X32.max(axis=0), np.float32(1.0))
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._start = self._t = 0
        self._position = 0.0
        self._equity = self._fees = 0.0

    def _obs(self) -> np.ndarray:
        obs = np.empty(self.X.shape[1] + 1, np.float32)
        obs[:-1] = self.X[self._t]
        obs[-1] = self._position
        return obs

    def _info(self) -> dict:
        return {"equity": self._equity, "position": self._position, "t": self._t,
                "fees": self._fees}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        last_start = self.n_steps - self.episode_length
        if options and "start" in options:
            start = int(options["start"])
            if not 0 <= start <= last_start:
                raise ValueError(f"start must be in [0, {last_start}], got {start}")
        else:
            start = int(self.np_random.integers(0, last_start + 1))
        self._start = self._t = start
        self._position = 0.0
        self._equity = self._fees = 0.0
        return self._obs(), self._info()

    def step(self, action):
        try:
            a = operator.index(action)        # int, numpy integer or 0-d integer array
        except TypeError:
            a = -1
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"action must be 0 (short), 1 (flat) or 2 (long), got {action!r}")
        if self._t - self._start >= self.episode_length:
            raise RuntimeError("the episode is over: call reset()")
        position = float(POSITIONS[a])
        fee = self.fee * abs(position - self._position)
        reward = position * float(self.returns[self._t]) - fee
        self._equity += reward
        self._fees += fee
        self._position = position
        self._t += 1
        truncated = self._t - self._start >= self.episode_length
        return self._obs(), reward, False, truncated, self._info()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _glorot(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out)).astype(np.float32)


def _init_mlp(rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    """[W1, b1, W2, b2, ...] float32; Glorot uniform weights, zero biases."""
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        out += [_glorot(rng, n_in, n_out), np.zeros(n_out, np.float32)]
    return out


def _mlp_np(layers: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """tanh hidden layers, linear output."""
    for k in range(0, len(layers) - 2, 2):
        x = np.tanh(x @ layers[k] + layers[k + 1])
    return x @ layers[-2] + layers[-1]


class RLAgent:
    """Advantage actor-critic in TensorFlow, served as a numpy MLP. Interface of the
    other models: fit / predict_proba (down / flat / up = short / flat / long) / save / load."""

    def __init__(self, **params):
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown RL agent parameters: {sorted(unknown)}")
        self.params = {**DEFAULTS, **params}
        self.params["hidden"] = [int(h) for h in self.params["hidden"]]
        self.n_features: int | None = None
        self.layers: list[np.ndarray] | None = None     # policy weights, float64, for serving
        self.x_mean: np.ndarray | None = None
        self.x_std: np.ndarray | None = None
        self.history: list[float] = []      # mean episode equity (after fees) per update
        self._tf_policy = None              # TF variables after fit in this process

    # ---- serving (numpy) ----

    def _inputs(self, X: np.ndarray, position) -> np.ndarray:
        pos = np.broadcast_to(np.asarray(position, dtype=np.float64), (len(X),))
        return np.column_stack([(X - self.x_mean) / self.x_std, pos])

    def action_proba(self, X, position=0.0) -> np.ndarray:
        """(n, 3) float64 probabilities of short / flat / long for rows of X, holding
        ``position`` (a scalar or one per row, in {-1, 0, 1})."""
        if self.layers is None:
            raise RuntimeError("RLAgent: fit or load it first")
        X = check_X(X, self.n_features)
        return _softmax(_mlp_np(self.layers, self._inputs(X, position)))

    def predict_proba(self, X) -> np.ndarray:
        """(n, 3) float64 probabilities of down / flat / up: the policy's short / flat /
        long probabilities from a flat position (the ensemble scores statelessly)."""
        return self.action_proba(X, 0.0)

    def _standardise_obs(self, obs: np.ndarray) -> np.ndarray:
        """Env observations (rows of X row + position) as the policy's float64 inputs."""
        x = np.array(obs, dtype=np.float64, ndmin=2)
        x[:, :-1] -= self.x_mean
        x[:, :-1] /= self.x_std
        return x

    def action_proba_tf(self, X, position=0.0) -> np.ndarray:
        """The same as `action_proba` through the TensorFlow policy (float32); only after
        ``fit`` in this process. For checking the numpy path."""
        if self._tf_policy is None:
            raise RuntimeError("RLAgent: the TensorFlow policy exists only after fit")
        tf = tensorflow()
        X = check_X(X, self.n_features)
        return tf.nn.softmax(self._tf_forward(self._tf_policy, self._inputs(X, position))).numpy()

    # ---- training (TensorFlow) ----

    @staticmethod
    def _tf_forward(variables, x):
        tf = tensorflow()
        x = tf.convert_to_tensor(x, tf.float32)
        for k in range(0, len(variables) - 2, 2):
            x = tf.tanh(tf.matmul(x, variables[k]) + variables[k + 1])
        return tf.matmul(x, variables[-2]) + variables[-1]

    def fit(self, X, y=None, seed: int = 0, *, close=None, future_return=None) -> "RLAgent":
        """Train on rows of X in time order with rewards from ``close`` or
        ``future_return`` (one per row, see the module docstring). ``y`` is accepted for
        the common interface and ignored: the agent learns from the reward."""
        p = self.params
        X = check_X(X)
        if y is not None and np.shape(y) != (len(X),):
            raise ValueError(f"y must have shape ({len(X)},), got {np.shape(y)}")
        env = TradingEnv(X, close=close, future_return=future_return, fee=p["fee"],
                         episode_length=p["episode_length"])
        tf = tensorflow()                             # training only, after the input checks
        self.n_features = X.shape[1]
        self.x_mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.x_std = np.where(std > 0, std, 1.0)
        rng = np.random.default_rng(seed)
        sizes = [self.n_features + 1, *p["hidden"]]
        policy = [tf.Variable(w) for w in _init_mlp(rng, sizes + [N_ACTIONS])]
        critic = [tf.Variable(w) for w in _init_mlp(rng, sizes + [1])]
        variables = policy + critic
        opt = tf.keras.optimizers.Adam(learning_rate=p["learning_rate"])
        forward = self._tf_forward

        @tf.function(reduce_retracing=True)
        def update(obs, actions, adv, ret):
            """One A2C step: policy gradient with an entropy bonus, value regression."""
            with tf.GradientTape() as tape:
                logp = tf.nn.log_softmax(forward(policy, obs))
                logp_a = tf.gather(logp, actions, batch_dims=1)     # log pi(a_t | s_t)
                entropy = -tf.reduce_mean(tf.reduce_sum(tf.exp(logp) * logp, axis=1))
                value = forward(critic, obs)[:, 0]
                loss = (-tf.reduce_mean(logp_a * adv) - p["entropy_coef"] * entropy
                        + p["value_coef"] * tf.reduce_mean(tf.square(ret - value)))
            grads = tape.gradient(loss, variables)
            grads, _ = tf.clip_by_global_norm(grads, p["max_grad_norm"])
            opt.apply_gradients(zip(grads, variables))

        self._tf_policy = policy
        self._sync(policy)
        self.history = []
        env.reset(seed=seed)
        n_updates = max(1, p["episodes"] // p["episodes_per_update"])
        for _ in range(n_updates):
            episodes = [self._play(env, rng) for _ in range(p["episodes_per_update"])]
            values = forward(critic, np.concatenate([e[0] for e in episodes])).numpy()[:, 0]
            obs, actions, adv, ret = [], [], [], []
            offset = 0
            for x, a, r, _ in episodes:
                v = values[offset:offset + len(x)].astype(np.float64)
                offset += len(x)
                gae = self._gae(r, v)
                obs.append(x[:-1])
                actions.append(a)
                adv.append(gae)
                ret.append(gae + v[:-1])          # the critic's target: lambda-return
            adv = np.concatenate(adv)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            update(tf.constant(np.concatenate(obs), tf.float32),
                   tf.constant(np.concatenate(actions), tf.int32),
                   tf.constant(adv, tf.float32), tf.constant(np.concatenate(ret), tf.float32))
            self._sync(policy)
            self.history.append(float(np.mean([e[3] for e in episodes])))
        return self

    def _sync(self, policy) -> None:
        """The TF policy's weights as the numpy serving arrays (float64)."""
        self.layers = [np.asarray(v.numpy(), dtype=np.float64) for v in policy]

    def _play(self, env: TradingEnv, rng: np.random.Generator):
        """One episode with actions sampled from the numpy policy. Returns the
        standardised observations (one more than steps: the last one too), the
        actions, the scaled rewards and the episode's equity after fees."""
        obs, _ = env.reset()
        observations, actions, rewards = [obs], [], []
        truncated = False
        while not truncated:
            prob = _softmax(_mlp_np(self.layers, self._standardise_obs(obs)))[0]
            u = rng.random()                      # inverse-CDF draw from the 3 probabilities
            a = 0 if u < prob[0] else 1 if u < prob[0] + prob[1] else 2
            obs, reward, _, truncated, info = env.step(a)
            observations.append(obs)
            actions.append(a)
            rewards.append(reward * self.params["reward_scale"])
        return (self._standardise_obs(np.asarray(observations)), np.asarray(actions),
                np.asarray(rewards), info["equity"])

    def _gae(self, rewards: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Generalised advantage estimation over one episode; ``values`` has one more
        entry than ``rewards``. The episode was truncated, not terminated, so the value
        of its last observation stands for what would follow."""
        gamma, lam = self.params["gamma"], self.params["gae_lambda"]
        adv = np.zeros(len(rewards))
        acc = 0.0
        for t in range(len(rewards) - 1, -1, -1):
            delta = rewards[t] + gamma * values[t + 1] - values[t]
            acc = delta + gamma * lam * acc
            adv[t] = acc
        return adv

    # ---- artifacts ----

    def save(self, directory: Path) -> None:
        """``policy.npz`` (policy weights and input standardisation, no pickle) and
        ``params.json`` into an existing directory; loading needs no TensorFlow."""
        if self.layers is None:
            raise RuntimeError("RLAgent: nothing to save, fit it first")
        directory = Path(directory)
        arrays = {f"layer{k}": w for k, w in enumerate(self.layers)}
        np.savez(directory / ARRAYS, x_mean=self.x_mean, x_std=self.x_std, **arrays)
        meta = {"model": "rl_a2c", "params": self.params, "n_features": self.n_features,
                "n_layers": len(self.layers), "history": self.history}
        (directory / PARAMS).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "RLAgent":
        directory = Path(directory)
        meta = json.loads((directory / PARAMS).read_text())
        agent = cls(**meta["params"])
        agent.n_features = int(meta["n_features"])
        agent.history = list(meta.get("history", []))
        with np.load(directory / ARRAYS, allow_pickle=False) as z:
            agent.layers = [np.ascontiguousarray(z[f"layer{k}"], dtype=np.float64)
                            for k in range(int(meta["n_layers"]))]
            agent.x_mean = np.ascontiguousarray(z["x_mean"], dtype=np.float64)
            agent.x_std = np.ascontiguousarray(z["x_std"], dtype=np.float64)
        sizes = [agent.n_features + 1, *agent.params["hidden"], N_ACTIONS]
        expected = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
        got = [w.shape for w in agent.layers]
        if got != expected or agent.x_mean.shape != (agent.n_features,) \
                or agent.x_std.shape != (agent.n_features,):
            raise ValueError(f"{directory / ARRAYS}: weight shapes {got} do not match "
                             f"{agent.n_features} features and hidden {agent.params['hidden']}")
        return agent
