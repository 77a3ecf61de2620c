"""CarRacing's car dynamics, the same arithmetic with less Python overhead.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), train C on the real CarRacing
environment; past its renderer (:mod:`worldmodels.envs.car_racing`), the largest cost of a
frame that nobody draws (action repeat) is gymnasium's ``Car.step``: per wheel ~25 attribute
reads and writes on Box2D's SWIG proxies, and NumPy calls on scalars (``np.sign``,
``np.sqrt(np.square(.))``, ``np.clip`` in ``Car.gas``), each a microsecond or more.

:func:`car_step` and :func:`car_gas` are gymnasium 1.x's ``Car.step`` and ``Car.gas`` with
each wheel's state read once into locals and written back once, and the scalar NumPy calls
replaced by the Python operations they perform on a float64: ``x * x`` is ``np.square(x)``,
``math.sqrt`` is ``np.sqrt`` (both the correctly rounded IEEE-754 square root), ``np.sign``
of a non-zero float is ``1.0`` or ``-1.0``, and ``np.clip`` of a value already in range is the
value. Every remaining expression is evaluated in the stock order, so every force, motor
speed and wheel state handed to Box2D, and with them every reward and frame, is bit-identical
to stock ``CarRacing-v3``; zero and NaN, where ``np.sign`` differs from a comparison, take the
stock call. ``tests/test_fast_env.py`` compares whole episodes against the stock environment.

:func:`install` puts them on a car only when gymnasium's ``Car.step`` and ``Car.gas`` are the
source this was written from (a hash of their text): another gymnasium version keeps its own
dynamics, slower but never different.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import types
from typing import Any

import numpy as np
from gymnasium.envs.box2d import car_dynamics as _cd

__all__ = ["car_gas", "car_step", "install", "matches_stock"]

_ENGINE_POWER = _cd.ENGINE_POWER
_WHEEL_MOMENT_OF_INERTIA = _cd.WHEEL_MOMENT_OF_INERTIA
_FRICTION_LIMIT = _cd.FRICTION_LIMIT
_GRASS_LIMIT = _cd.FRICTION_LIMIT * 0.6
_FORCE_COEF = 205000 * _cd.SIZE * _cd.SIZE  # the stock expression, evaluated in its order
_BRAKE_FORCE = 15  # radians per second (a local of the stock step)

#: sha256 of the source of gymnasium's ``Car.step`` and ``Car.gas`` that this module replicates
#: (gymnasium 1.4.0's)
_STOCK_SOURCE = "ac9ec1285c743b35e303b80e0196a092b241c4c702830e56ccca767a6bdd21d8"


def _source_hash() -> str | None:
    try:
        text = inspect.getsource(_cd.Car.step) + inspect.getsource(_cd.Car.gas)
    except (OSError, TypeError):  # no source shipped: cannot tell, so do not replace
        return None
    return hashlib.sha256(text.encode()).hexdigest()


_MATCHES = _source_hash() == _STOCK_SOURCE


def matches_stock() -> bool:
    """True when the installed gymnasium's ``Car.step`` / ``Car.gas`` are the replicated ones."""
    return _MATCHES


def car_gas(self: Any, gas: Any) -> None:
    """``Car.gas``: rear-wheel drive, the throttle clipped to [0, 1] and raised by at most 0.1
    a frame."""
    if not 0 <= gas <= 1:  # out of range, or NaN: the stock clip
        gas = np.clip(gas, 0, 1)
    for w in self.wheels[2:4]:
        diff = gas - w.gas
        if diff > 0.1:
            diff = 0.1  # gradually increase, but stop immediately
        w.gas += diff


def car_step(self: Any, dt: float) -> None:
    """``Car.step(dt)``: steering motors, wheel spin, tyre friction and the forces on each
    wheel, skid traces included."""
    for w in self.wheels:
        d = w.__dict__
        joint = d["joint"]
        # Steer each wheel
        steer_error = d["steer"] - joint.angle
        if steer_error > 0:
            joint.motorSpeed = min(50.0 * steer_error, 3.0)
        elif steer_error < 0:
            joint.motorSpeed = -1.0 * min(50.0 * -steer_error, 3.0)
        else:
            joint.motorSpeed = np.sign(steer_error) * min(50.0 * abs(steer_error), 3.0)

        # Position => friction_limit
        grass = True
        friction_limit = _GRASS_LIMIT
        for tile in d["tiles"]:
            friction_limit = max(friction_limit, _FRICTION_LIMIT * tile.road_friction)
            grass = False

        # Force
        forw = w.GetWorldVector((0, 1))
        side = w.GetWorldVector((1, 0))
        v = w.linearVelocity
        v0, v1 = v[0], v[1]
        f0, f1 = forw[0], forw[1]
        s0, s1 = side[0], side[1]
        vf = f0 * v0 + f1 * v1  # forward speed
        vs = s0 * v0 + s1 * v1  # side speed

        gas = d["gas"]
        omega = d["omega"]
        omega += dt * _ENGINE_POWER * gas / _WHEEL_MOMENT_OF_INERTIA / (abs(omega) + 5.0)
        self.fuel_spent += dt * _ENGINE_POWER * gas

        brake = d["brake"]
        if brake >= 0.9:
            omega = 0
        elif brake > 0:
            if omega > 0:
                sign = -1.0
            elif omega < 0:
                sign = 1.0
            else:
                sign = -np.sign(omega)
            val = _BRAKE_FORCE * brake
            if abs(val) > abs(omega):
                val = abs(omega)  # low speed => same as = 0
            omega += sign * val
        d["phase"] = d["phase"] + omega * dt

        wheel_rad = d["wheel_rad"]
        vr = omega * wheel_rad  # rotating wheel speed
        f_force = -vf + vr  # force direction is direction of speed difference
        p_force = -vs
        f_force *= _FORCE_COEF
        p_force *= _FORCE_COEF
        force = math.sqrt(f_force * f_force + p_force * p_force)

        # Skid trace
        if abs(force) > 2.0 * friction_limit:
            skid = d["skid_particle"]
            if skid and skid.grass == grass and len(skid.poly) < 30:
                position = w.position
                skid.poly.append((position[0], position[1]))
            elif d["skid_start"] is None:
                d["skid_start"] = w.position
            else:
                d["skid_particle"] = self._create_particle(d["skid_start"], w.position, grass)
                d["skid_start"] = None
        else:
            d["skid_start"] = None
            d["skid_particle"] = None

        if abs(force) > friction_limit:
            f_force /= force
            p_force /= force
            force = friction_limit  # Correct physics here
            f_force *= force
            p_force *= force

        omega -= dt * f_force * wheel_rad / _WHEEL_MOMENT_OF_INERTIA
        d["omega"] = omega

        w.ApplyForceToCenter((p_force * s0 + f_force * f0, p_force * s1 + f_force * f1), True)


def install(car: Any) -> bool:
    """Give ``car`` (a gymnasium ``Car``) :func:`car_step` and :func:`car_gas`, when the
    installed gymnasium's are the replicated ones; returns whether it did."""
    if not _MATCHES:
        return False
    car.step = types.MethodType(car_step, car)
    car.gas = types.MethodType(car_gas, car)
    return True
