"""Native CARLA weather for our image corruptions (fog, rain) at severities 0-5.

Why copy a preset: ``carla.WeatherParameters(fog_density=...)`` built from keywords sets every
field it is not given to 0 (measured with the 0.9.16 client: ``scattering_intensity`` and
``mie_scattering_scale`` become 0.0, the sun sits on the horizon), which renders a flat,
unlit sky. So we start from a named preset (``ClearNoon`` by default) and change only the
fields listed below.

Why copy field by field: ``carla.WeatherParameters.ClearNoon`` is one shared object per
process (measured: assigning ``fog_density`` on it changes what every later
``WeatherParameters.ClearNoon`` returns), and Boost.Python refuses ``copy.copy``. So we build
a fresh ``WeatherParameters()`` and copy every field of the preset into it; the preset is
never touched.

Severity 0 is the preset unchanged. For severities 1-5 each field below is raised to at
least the table's value (``max(preset, table)``; ``fog_distance`` is lowered:
``min(preset, table)``), so a wet or foggy preset never gets *less* weather and every field
is monotonic in severity.

====================  ======  ======  ======  ======  ======  ===================================
field                 sev 1   sev 2   sev 3   sev 4   sev 5   meaning (CARLA 0.9.16 docs)
====================  ======  ======  ======  ======  ======  ===================================
fog: fog_density      15      30      50      70      90      fog thickness, 0-100
fog: fog_distance     10      6       3       1       0       metres from camera where fog starts
fog: cloudiness       20      30      40      50      60      0-100, darker sky
rain: precipitation   20      40      60      80      100     rain intensity, 0-100
rain: precip._deposits 10     25      45      65      85      puddles on the road, 0-100
rain: wetness         20      40      60      80      100     water on the camera/road, 0-100
rain: cloudiness      40      60      75      90      100     0-100
rain: wind_intensity  10      25      40      60      80      slants the rain, 0-100
rain: fog_density     3       6       10      15      20      the haze of heavy rain
====================  ======  ======  ======  ======  ======  ===================================

These levels are chosen by the meaning of the fields, not calibrated against our
Koschmieder fog and rendered rain (no CARLA server runs on our machines); calibrating them
against visibility needs a server and is listed in docs/carla.md.
"""

from __future__ import annotations

from typing import Any

# Every field of carla.WeatherParameters in 0.9.16 (order of its constructor).
WEATHER_FIELDS: tuple[str, ...] = (
    "cloudiness",
    "precipitation",
    "precipitation_deposits",
    "wind_intensity",
    "sun_azimuth_angle",
    "sun_altitude_angle",
    "fog_density",
    "fog_distance",
    "fog_falloff",
    "wetness",
    "scattering_intensity",
    "mie_scattering_scale",
    "rayleigh_scattering_scale",
    "dust_storm",
)

# corruption -> field -> (value at severity 1..5, "max" | "min")
WEATHER_TABLE: dict[str, dict[str, tuple[tuple[float, ...], str]]] = {
    "fog": {
        "fog_density": ((15.0, 30.0, 50.0, 70.0, 90.0), "max"),
        "fog_distance": ((10.0, 6.0, 3.0, 1.0, 0.0), "min"),
        "cloudiness": ((20.0, 30.0, 40.0, 50.0, 60.0), "max"),
    },
    "rain": {
        "precipitation": ((20.0, 40.0, 60.0, 80.0, 100.0), "max"),
        "precipitation_deposits": ((10.0, 25.0, 45.0, 65.0, 85.0), "max"),
        "wetness": ((20.0, 40.0, 60.0, 80.0, 100.0), "max"),
        "cloudiness": ((40.0, 60.0, 75.0, 90.0, 100.0), "max"),
        "wind_intensity": ((10.0, 25.0, 40.0, 60.0, 80.0), "max"),
        "fog_density": ((3.0, 6.0, 10.0, 15.0, 20.0), "max"),
    },
}

NATIVE_CORRUPTIONS: tuple[str, ...] = tuple(WEATHER_TABLE)
MAX_SEVERITY = 5


def preset_names(weather_cls: Any) -> list[str]:
    """Names of the presets on ``carla.WeatherParameters`` (capitalised attributes)."""
    return sorted(
        n for n in dir(weather_cls) if n[:1].isupper() and not callable(getattr(weather_cls, n))
    )


def get_preset(weather_cls: Any, name: str) -> Any:
    """The preset object ``weather_cls.<name>``; a clear ``ValueError`` for an unknown name."""
    if not isinstance(name, str) or not name[:1].isupper() or not hasattr(weather_cls, name):
        raise ValueError(
            f"unknown CARLA weather preset {name!r}; choose one of "
            f"{', '.join(preset_names(weather_cls))}"
        )
    return getattr(weather_cls, name)


def copy_weather(preset: Any) -> Any:
    """A new weather object with every field of ``preset``; ``preset`` itself is not changed."""
    out = type(preset)()
    for field in WEATHER_FIELDS:
        if hasattr(preset, field):
            setattr(out, field, float(getattr(preset, field)))
    return out


def check_corruption(corruption: str | None, severity: int) -> None:
    """Raise ``ValueError`` unless (corruption, severity) has a native CARLA weather."""
    if isinstance(severity, bool) or not isinstance(severity, int):
        raise ValueError(f"severity must be an int 0-{MAX_SEVERITY}, got {severity!r}")
    if not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be in 0-{MAX_SEVERITY}, got {severity}")
    if corruption is None:
        if severity != 0:
            raise ValueError("a severity > 0 needs a corruption: 'fog' or 'rain'")
        return
    if corruption not in WEATHER_TABLE:
        raise ValueError(
            f"corruption {corruption!r} has no native CARLA weather; native ones are "
            f"{', '.join(NATIVE_CORRUPTIONS)} (apply the others to the image with "
            "driving.corruptions)"
        )


def weather_for(preset: Any, corruption: str | None = None, severity: int = 0) -> Any:
    """A copy of ``preset`` with ``corruption`` applied at ``severity`` (see the table above)."""
    check_corruption(corruption, severity)
    weather = copy_weather(preset)
    if corruption is None or severity == 0:
        return weather
    for field, (levels, how) in WEATHER_TABLE[corruption].items():
        base = float(getattr(weather, field))
        level = levels[severity - 1]
        setattr(weather, field, max(base, level) if how == "max" else min(base, level))
    return weather


def weather_dict(weather: Any) -> dict[str, float]:
    """Plain dict of a weather object's fields (for logs and dataset metadata)."""
    return {f: float(getattr(weather, f)) for f in WEATHER_FIELDS if hasattr(weather, f)}
