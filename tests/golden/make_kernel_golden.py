"""Record PyTorch optimizer trajectories as golden data for lrcore's kernels: writes kernels.npz.

Every case runs one ``torch.optim`` class (``foreach=False``, the plain per-tensor loop) on a
37-element parameter for 25 steps and saves the parameter and every state buffer after each step.
Needs torch (pinned: ``pip install torch==2.13.0``); tests/test_golden_torch.py only needs numpy.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

SIZE = 37  # odd and not a multiple of any vector width, so kernels' tails are exercised
N_STEPS = 25
SEED = 20240601
DTYPES = ("float32", "float64")
FORMAT_VERSION = 1

# (case name, torch.optim class name, torch keyword arguments besides params and foreach)
CASES = [
    ("sgd_plain", "SGD", {"lr": 0.1}),
    ("sgd_momentum_dampening_wd", "SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("sgd_nesterov_wd", "SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.001}),
    ("sgd_momentum_maximize", "SGD", {"lr": 0.02, "momentum": 0.5, "maximize": True}),
    ("adam_default", "Adam", {"lr": 1e-3}),
    ("adam_wd", "Adam", {"lr": 1e-2, "weight_decay": 0.05}),
    ("adam_amsgrad", "Adam", {"lr": 1e-2, "betas": (0.8, 0.99), "amsgrad": True}),
    ("adam_maximize", "Adam", {"lr": 1e-2, "eps": 1e-6, "maximize": True}),
    ("adam_beta1_small", "Adam", {"lr": 5e-3, "betas": (0.3, 0.9)}),
    ("adamw_wd", "AdamW", {"lr": 1e-2, "weight_decay": 0.1}),
    ("adamw_amsgrad_maximize", "AdamW", {"lr": 1e-2, "weight_decay": 0.05, "amsgrad": True, "maximize": True}),
    ("adagrad_default", "Adagrad", {"lr": 0.01}),
    ("adagrad_lr_decay_wd_initial_accumulator", "Adagrad",
     {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.02, "initial_accumulator_value": 0.5}),
    ("adagrad_maximize", "Adagrad", {"lr": 0.05, "eps": 1e-8, "maximize": True}),
    ("rmsprop_plain", "RMSprop", {"lr": 0.01}),
    ("rmsprop_centered", "RMSprop", {"lr": 0.01, "centered": True}),
    ("rmsprop_momentum", "RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("rmsprop_centered_momentum_wd", "RMSprop",
     {"lr": 0.005, "alpha": 0.9, "eps": 1e-6, "centered": True, "momentum": 0.5, "weight_decay": 0.01}),
    ("rmsprop_maximize", "RMSprop", {"lr": 0.01, "maximize": True}),
    ("adadelta_default", "Adadelta", {}),
    ("adadelta_wd", "Adadelta", {"lr": 1.0, "weight_decay": 0.1}),
    ("adadelta_rho_eps_maximize", "Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "maximize": True}),
    ("adamax_default", "Adamax", {"lr": 2e-3}),
    ("adamax_beta1_small_wd_maximize", "Adamax",
     {"lr": 1e-2, "betas": (0.3, 0.9), "weight_decay": 0.05, "maximize": True}),
    ("nadam_default", "NAdam", {"lr": 2e-3}),
    ("nadam_wd_momentum_decay", "NAdam", {"lr": 1e-2, "weight_decay": 0.05, "momentum_decay": 0.01}),
    ("nadamw_maximize", "NAdam",
     {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}),
    ("nadam_beta1_small", "NAdam", {"lr": 5e-3, "betas": (0.3, 0.9), "eps": 1e-6}),
    ("radam_default", "RAdam", {"lr": 1e-3}),            # rectified from step 6 (rho_t > 5)
    ("radam_wd_maximize", "RAdam", {"lr": 1e-2, "weight_decay": 0.05, "maximize": True}),
    ("radamw_beta1_small", "RAdam",
     {"lr": 1e-2, "betas": (0.3, 0.9), "weight_decay": 0.1, "decoupled_weight_decay": True}),
]

# Hyperparameters copied from the resolved param_group into the index (torch's defaults filled in).
HYPERPARAMETER_KEYS = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    "Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"),
    "AdamW": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"),
    "Adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"),
    "RMSprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
    "Adadelta": ("lr", "rho", "eps", "weight_decay", "maximize"),
    "Adamax": ("lr", "betas", "eps", "weight_decay", "maximize"),
    "NAdam": ("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay",
              "maximize"),
    "RAdam": ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
}

# Per-parameter scalar state other than `step` (recorded as <name>__scalar__<state>, (n_steps,)).
SCALAR_STATES = {"NAdam": ("mu_product",)}


def nonzero_random(rng: np.random.Generator, shape, low: float, high: float) -> np.ndarray:
    """Random values with magnitude in [low, high) and a random sign: never zero."""
    magnitude = rng.uniform(low, high, size=shape)
    sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
    return sign * magnitude


def make_inputs() -> tuple[np.ndarray, np.ndarray]:
    """Initial parameter (SIZE,) and one gradient per step (N_STEPS, SIZE), float64."""
    rng = np.random.default_rng(SEED)
    initial_param = nonzero_random(rng, SIZE, 0.05, 2.0)
    grads = nonzero_random(rng, (N_STEPS, SIZE), 0.01, 3.0)
    return initial_param, grads


def run_case(optimizer_name: str, torch_kwargs: dict, initial_param: np.ndarray, grads: np.ndarray):
    """Run one torch optimizer; return (resolved hyperparameters, param trajectory, {state: trajectory},
    {scalar state: trajectory})."""
    param = torch.nn.Parameter(torch.from_numpy(initial_param.copy()))
    optimizer = getattr(torch.optim, optimizer_name)([param], foreach=False, **torch_kwargs)
    group = optimizer.param_groups[0]
    hyperparameters = {key: _jsonable(group[key]) for key in HYPERPARAMETER_KEYS[optimizer_name] if key in group}

    param_trajectory = np.empty_like(grads)
    state_trajectories: dict[str, np.ndarray] = {}
    scalar_trajectories = {name: np.empty(N_STEPS) for name in SCALAR_STATES.get(optimizer_name, ())}
    for step_index in range(N_STEPS):
        param.grad = torch.from_numpy(grads[step_index].copy())
        optimizer.step()
        param_trajectory[step_index] = param.detach().numpy()
        for state_name, value in optimizer.state[param].items():
            if state_name == "step":
                continue
            if state_name in scalar_trajectories:
                scalar_trajectories[state_name][step_index] = float(value)
                continue
            if not (torch.is_tensor(value) and value.shape == param.shape):
                raise RuntimeError(f"{optimizer_name} state {state_name!r} is {value!r}; expected a tensor like param")
            if state_name not in state_trajectories:
                if step_index != 0:
                    raise RuntimeError(f"{optimizer_name} state {state_name!r} appeared only at step {step_index + 1}")
                state_trajectories[state_name] = np.empty_like(grads)
            state_trajectories[state_name][step_index] = value.detach().numpy()
        if "step" in optimizer.state[param]:  # SGD keeps no step count
            assert int(optimizer.state[param]["step"]) == step_index + 1
    return hyperparameters, param_trajectory, state_trajectories, scalar_trajectories


def _jsonable(value):
    if torch.is_tensor(value):
        return value.item()
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    return value


def build_golden() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    initial_param64, grads64 = make_inputs()
    arrays: dict[str, np.ndarray] = {}
    index = []
    for dtype in DTYPES:
        initial_param = initial_param64.astype(dtype)
        grads = grads64.astype(dtype)
        arrays[f"inputs__{dtype}__initial_param"] = initial_param
        arrays[f"inputs__{dtype}__grads"] = grads
        for case_name, optimizer_name, torch_kwargs in CASES:
            hyperparameters, param_trajectory, state_trajectories, scalars = run_case(
                optimizer_name, torch_kwargs, initial_param, grads
            )
            key = f"{case_name}__{dtype}"
            arrays[f"{key}__param"] = param_trajectory
            for state_name, trajectory in state_trajectories.items():
                arrays[f"{key}__state__{state_name}"] = trajectory
            for state_name, trajectory in scalars.items():
                arrays[f"{key}__scalar__{state_name}"] = trajectory
            index.append({
                "name": key,
                "case": case_name,
                "optimizer": optimizer_name,
                "torch_kwargs": {name: _jsonable(value) for name, value in torch_kwargs.items()},
                "hyperparameters": hyperparameters,
                "dtype": dtype,
                "state_names": sorted(state_trajectories),
                "scalar_state_names": sorted(scalars),
            })
    meta = {
        "format_version": FORMAT_VERSION,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "size": SIZE,
        "n_steps": N_STEPS,
        "seed": SEED,
        "layout": "inputs__<dtype>__initial_param (size,), inputs__<dtype>__grads (n_steps, size); "
                  "<name>__param and <name>__state__<torch state name> (n_steps, size): values after each step; "
                  "<name>__scalar__<torch state name> (n_steps,): per-parameter scalar state (NAdam's mu_product)",
        "cases": index,
    }
    arrays["index_json"] = np.array(json.dumps(meta, indent=1))
    arrays["torch_version"] = np.array(torch.__version__)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.npz"))
    args = parser.parse_args()
    arrays = build_golden()
    np.savez_compressed(args.out, **arrays)
    n_cases = len(json.loads(str(arrays["index_json"]))["cases"])
    print(f"wrote {args.out}: {n_cases} cases, {os.path.getsize(args.out)} bytes, torch {torch.__version__}")


if __name__ == "__main__":
    main()
