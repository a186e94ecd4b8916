"""Where the photos of the offline corpus come from: one :class:`PhotoSource` per photo.

Every entry names its package, the file (PyPI: path inside site-packages; Debian: the
absolute installed path, plus the member path when the picture sits inside a Qt resource
bundle), the licence as the package states it (per-file stanza of the Debian copyright
file, or the upstream metadata next to the picture when it is more precise; both are given
when they differ), the credit where one is stated, and the scene group: photos of one scene
(a stereo pair, two frames of one sequence) share a group, so :func:`karl.data.corpus.split_sources`
holds them out together.

Only photographs are listed; every Debian package here was unpacked and looked at picture by
picture. What was left out, and why, is in docs/DATA_AND_METRICS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from karl.data.corpus_gcompris import (GCOMPRIS_DEFAULT_LICENSE, GCOMPRIS_PACKAGE, GCOMPRIS_ROWS, GCOMPRIS_SCENES,
                                       gcompris_paths)

__all__ = ["PhotoSource", "PYPI_PHOTOS", "DEBIAN_PHOTOS", "DEBIAN_PACKAGES", "GCOMPRIS_PHOTOS"]


@dataclass(frozen=True)
class PhotoSource:
    package: str    # PyPI distribution or Debian package
    file: str       # PyPI: path inside site-packages; Debian: absolute path
    license: str
    credit: str = ""
    group: str = ""   # photos of one scene share a group (held out together)
    label: str = ""   # corpus name when the file stem is not unique
    member: str = ""  # path inside the Qt resource bundle ``file`` (.rcc), if any

    @property
    def name(self) -> str:
        return self.label or PurePosixPath(self.member or self.file).stem

    @property
    def original(self) -> str:
        """The original file as the manifest records it."""
        path = self.file if self.file.startswith("/") else f"site-packages/{self.file}"
        return f"{path}:{self.member}" if self.member else path


_SK = "scikit-image"
_SK_PD = "public domain"
PYPI_PHOTOS: tuple[PhotoSource, ...] = (
    PhotoSource(_SK, "skimage/data/astronaut.png", _SK_PD, "NASA (Eileen Collins)"),
    PhotoSource(_SK, "skimage/data/coffee.png", "CC0-1.0", "Rachel Michetti"),
    PhotoSource(_SK, "skimage/data/chelsea.png", "CC0-1.0", "Stefan van der Walt"),
    PhotoSource(_SK, "skimage/data/rocket.jpg", _SK_PD, "SpaceX (DSCOVR launch)"),
    PhotoSource(_SK, "skimage/data/motorcycle_left.png", "not stated (Middlebury 2014 stereo benchmark)",
                "Scharstein et al., Middlebury College", group="scikit-image:motorcycle"),
    PhotoSource(_SK, "skimage/data/motorcycle_right.png", "not stated (Middlebury 2014 stereo benchmark)",
                "Scharstein et al., Middlebury College", group="scikit-image:motorcycle"),
    PhotoSource(_SK, "skimage/data/hubble_deep_field.jpg", _SK_PD, "NASA/ESA Hubble"),
    PhotoSource(_SK, "skimage/data/retina.jpg", "CC0-1.0", "Mikael Haggstrom"),
    PhotoSource(_SK, "skimage/data/ihc.png", "no known copyright restrictions", "CMMI"),
    PhotoSource(_SK, "skimage/data/camera.png", "CC0-1.0", "Lav Varshney", group="scikit-image:camera"),
    PhotoSource(_SK, "skimage/data/coins.png", "no known copyright restrictions", "Museum of Pompeii"),
    PhotoSource(_SK, "skimage/data/brick.png", "CC0-1.0", "CC0Textures"),
    PhotoSource(_SK, "skimage/data/grass.png", "CC0-1.0", "CC0Textures"),
    PhotoSource(_SK, "skimage/data/gravel.png", "CC0-1.0", "CC0Textures"),
    PhotoSource("scikit-learn", "sklearn/datasets/images/china.jpg", "CC-BY-2.0", "danielbuechele (Flickr)"),
    PhotoSource("scikit-learn", "sklearn/datasets/images/flower.jpg", "CC-BY-2.0", "vultilion (Flickr)"),
    PhotoSource("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "public domain (U.S. Navy photograph)",
                "U.S. Navy"),
    PhotoSource("PyWavelets", "pywt/data/ascent.npz", "public domain", "public-domain-image.com"),
    PhotoSource("PyWavelets", "pywt/data/aero.npz", "not stated (PyWavelets sample data)"),
    PhotoSource("PyWavelets", "pywt/data/camera.npz", "CC0-1.0", "Lav Varshney", group="scikit-image:camera"),  # = skimage's
)


def _table(package: str, folder: str, rows: tuple[tuple[str, ...], ...], license_: str = "", credit: str = "",
           prefix: str = "") -> tuple[PhotoSource, ...]:
    """Rows of (file, [licence, [credit, [group]]]) under ``folder``; empty fields take the defaults.

    ``prefix`` makes the corpus names unique when two folders hold the same file name."""
    out = []
    for row in rows:
        file, lic, who, group = (tuple(row) + ("", "", ""))[:4]
        stem = PurePosixPath(file).stem
        out.append(PhotoSource(package, f"{folder}/{file}", lic or license_, who or credit,
                               group=f"{package}:{group}" if group else "",
                               label=f"{prefix}{stem}" if prefix else ""))
    return tuple(out)


_PLASMA = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
           "Kite", "OneStandsOut", "Path", "summer_1am")  # the photographs among its 30 wallpapers
_MATE = {"Aqua": "Charles Barbin", "Blinds": "Lennart Poettering, Andrea Cimitan", "Dune": "Marco Cogoni",
         "FreshFlower": "Jens Ansorg", "Garden": "Charles Barbin", "GreenMeadow": "Timothy Schellhase",
         "LadyBird": "Charles Barbin", "RainDrops": "blackcombwhistler07", "Storm": "Sergey Nazarov",
         "TwoWings": "Charles Barbin", "Wood": "Jean-Francois Fortin Tam", "YellowFlower": "Charles Barbin"}
_WALLPAPERS = tuple(
    PhotoSource("plasma-workspace-wallpapers", f"/usr/share/wallpapers/{d}/contents/images/2560x1600.jpg",
                "LGPL-3.0 (metadata.json; Debian copyright: GPL-2+)", label=d) for d in _PLASMA
) + tuple(
    PhotoSource("mate-backgrounds", f"/usr/share/backgrounds/mate/nature/{n}.jpg", "GPL-2+", who)
    for n, who in _MATE.items()
)

_BY4, _BYSA4 = "CC-BY-4.0", "CC-BY-SA-4.0"
_LOMIRI = _table("lomiri-wallpapers-16.04", "/usr/share/backgrounds", (
    ("aitzgorri_by_Aitzol_Berasategi.jpg", _BY4, "Aitzol Berasategi"),
    ("analogpattern_by_Peter_Nerlich.jpg", _BYSA4, "Peter Nerlich"),
    ("Bridge_by_Sander_Klootwijk.jpg", _BYSA4, "Sander Klootwijk"),
    ("Dragonfly_by_Bolly.jpg", _BYSA4, "Bolly"),
    ("free_by_Peter_Nerlich.jpg", _BYSA4, "Peter Nerlich"),
    ("friends_by_Aitzol_Berasategi.jpg", _BY4, "Aitzol Berasategi"),
    ("greentock_by_Peter_Nerlich.jpg", _BYSA4, "Peter Nerlich"),
    ("life_by_Aitzol_Berasategi.jpg", _BY4, "Aitzol Berasategi"),
    ("picosdeeuropa_by_Aitzol_Berasategi.jpg", _BY4, "Aitzol Berasategi"),
    ("Picture_0B_by_freespace.jpg", _BY4, 'Trevor "Freespace"'),
    ("Picture_1A_by_freespace.jpg", _BY4, 'Trevor "Freespace"'),
    ("seeding_by_Clements_Engelhardt.jpg", "CC0-1.0", "Clemens Engelhardt"),
    ("sunset_by_Aitzol_Berasategi.jpg", _BY4, "Aitzol Berasategi"),
    ("Wine_by_Jakkub_Mede.jpg", _BY4, "Jakub Mede"),
)) + _table("lomiri-wallpapers-20.04", "/usr/share/backgrounds", (
    ("Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0", "Lukas Baubkus"),
))

_LXQT = _table("lxqt-themes", "/usr/share/lxqt/wallpapers", (
    ("Butterfly-Kenneth-Wimer.jpg", "", "Kenneth Wimer"), ("Valendas.png",), ("after-the-rain.jpg",),
    ("appleflower.png",), ("beam.png",), ("butterfly.png",), ("cloud.png",), ("drop.png",), ("flowers.png",),
    ("fog.jpg",), ("this-is-not-windows.jpg",),
), "CC-BY-SA-3.0 (wallpapers/License; Debian copyright: LGPL-2.1+)", "stefonarch / LXQt Project Team")

_PD = "public domain"
_PALAPELI = _table("palapeli-data", "/usr/share/palapeli/collection", (
    ("castle-maintenon.jpg", "GFDL", "Eric Pouhier"),
    ("cincinnati-bridge.jpg", _PD, "Derek Jensen"),
    ("citrus-fruits.jpg", _PD, "US Department of Agriculture"),
    ("european-honey-bee.jpg", _PD, "John Severns"),
    ("panther-chameleon-female.jpg", "GFDL", "B. Navez and others"),
))

_TUXPAINT = _table("tuxpaint-data", "/usr/share/tuxpaint/templates", tuple((f"{n}.jpg",) for n in (
    "burnt_bark", "cliff", "corn_maze", "jellyfish", "lighthouse", "mossy_bark", "mossy_log", "mudstone",
    "ocean_splash", "ocean_waves", "redwoods_above", "rocks", "sheep", "spiders_web", "sun_behind_clouds",
    "sun_behind_leaves", "trees_above", "trees_at_dusk", "wool_mill_machine")), "GPL-2+", "Bill Kendrick",
) + _table("tuxpaint-data", "/usr/share/tuxpaint/starters", (
    ("reef-back.png", _PD, "NOAA, Thomas K. Gibson (Florida Keys National Marine Sanctuary)"),
    ("skyline-sf-dusk-back.jpeg", _PD, "NOAA, Rich Bourgerie"),
))

_PUZZLE = _table("puzzle-jigsaw", "/usr/share/puzzle-jigsaw", (
    ("samples/cat-animal-cat-portrait-mackerel.jpg", "CC0-1.0", "Pexels"),
    ("samples/pexels-photo-302304.jpeg", "CC0-1.0", "Pexels"),
    ("images/table.png", "GPL-3+", "DanSoft"),
))

_CV = "Apache-2.0 AND BSD-3-Clause (Debian copyright, Files: *; origin of the sample image not stated)"
_MB, _VGG = "Middlebury College (Scharstein et al.)", "Oxford VGG (K. Mikolajczyk)"
_OPENCV = _table("opencv-doc", "/usr/share/doc/opencv-doc/examples", (
    ("alphamat/input_images/plant.jpg",), ("data/aero1.jpg", "", "", "aero"), ("data/aero3.jpg", "", "", "aero"),
    ("data/aloeL.jpg", "", _MB, "aloe"), ("data/aloeR.jpg", "", _MB, "aloe"), ("data/apple.jpg",),
    ("data/baboon.jpg", "", "USC-SIPI image database"), ("data/basketball1.png", "", _MB, "basketball"),
    ("data/basketball2.png", "", _MB, "basketball"), ("data/board.jpg",), ("data/box.png", "", "", "box"),
    ("data/box_in_scene.png", "", "", "box"), ("data/building.jpg",), ("data/butterfly.jpg",),
    ("data/chicky_512.png",), ("data/ela_original.jpg",), ("data/fruits.jpg",),
    ("data/graf1.png", "", _VGG, "graf"), ("data/graf3.png", "", _VGG, "graf"), ("data/home.jpg",),
    ("data/leuvenA.jpg", "", "", "leuven"), ("data/leuvenB.jpg", "", "", "leuven"), ("data/orange.jpg",),
    ("data/rubberwhale1.png", "", _MB, "rubberwhale"), ("data/rubberwhale2.png", "", _MB, "rubberwhale"),
    ("data/squirrel_cls.jpg",), ("data/sudoku.png",), ("data/left.jpg", "", "", "books"),
    ("data/right.jpg", "", "", "books"), ("data/stuff.jpg",),
) + tuple((f"text/scenetext0{i}.jpg",) for i in range(1, 7)), _CV) + _table(
    "opencv-doc", "/usr/share/doc/opencv-doc/examples/hfs/data", (("000.jpg",), ("001.jpg",), ("002.jpg",)), _CV,
    prefix="hfs_")

_TUXTYPE = _table("tuxtype-data", "/usr/share/tuxtype/images", tuple(
    (f"kcas{i}.jpg",) for i in range(12)) + (("hidden.jpg",),),
    "GPL-2 (Debian copyright; README_IMAGES: photos from NOAA and U.S. FWS, public domain)",
    "NOAA / U.S. Fish and Wildlife Service")

_RIKU = "public domain (Debian copyright: Riku Leino's templates)"
_SCRIBUS = _table("scribus-template", "/usr/share/scribus/templates", (
    ("br2/halfmoon.jpg",), ("br2/nature.jpg",), ("br2/sunset.jpg",), ("menu2/pizza.jpg",),
), _RIKU, "Riku Leino") + _table("scribus-template", "/usr/share/scribus/templates/br2", (("moon.jpg",),), _RIKU,
                                 "Riku Leino", prefix="br2_") + _table(
    "scribus-template", "/usr/share/scribus/templates/cal2", (("moon.jpg",),), _RIKU, "Riku Leino", prefix="cal2_")

_OTHERS = _table("sddm-theme-maldives", "/usr/share/sddm/themes/maldives", (
    ("background.jpg", "CC-BY-3.0", "Nevit Dilmen"),), prefix="maldives_",
) + _table("libsixel-examples", "/usr/share/doc/libsixel-examples/examples/images", (
    ("snake.png",), ("egret.jpg",)), _PD, "Jon Sullivan")


_GCOMPRIS_GROUP = {name: f"{GCOMPRIS_PACKAGE}:{scene}" for scene, names in GCOMPRIS_SCENES.items() for name in names}


def _gcompris(activity: str, sub: str, license_: str, credit: str) -> PhotoSource:
    bundle, member, name = gcompris_paths(activity, sub)
    return PhotoSource(GCOMPRIS_PACKAGE, bundle, license_ or GCOMPRIS_DEFAULT_LICENSE, credit,
                       group=_GCOMPRIS_GROUP.get(name, ""), label=name, member=member)


GCOMPRIS_PHOTOS: tuple[PhotoSource, ...] = tuple(_gcompris(*row) for row in GCOMPRIS_ROWS)

DEBIAN_PHOTOS: tuple[PhotoSource, ...] = (_WALLPAPERS + _LOMIRI + _LXQT + _PALAPELI + _TUXPAINT + _PUZZLE
                                          + GCOMPRIS_PHOTOS + _OPENCV + _TUXTYPE + _SCRIBUS + _OTHERS)

# what ``--with-debian`` fetches: every package of the table, in table order
DEBIAN_PACKAGES: tuple[str, ...] = tuple(dict.fromkeys(src.package for src in DEBIAN_PHOTOS))
