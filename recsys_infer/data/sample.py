"""The built-in sample catalogue: a few thousand products and shoppers, made in code.

Deterministic (a fixed seed), so ``quickstart`` and the tests run on a fresh machine with no
download. Shoppers have a favourite category, often a favourite brand, sometimes a second
category in the same department, and now and then buy something popular elsewhere, so their
histories carry signal a recommender can learn.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from recsys_infer.runtime.catalog import Catalog, Item

from .dataset import Dataset
from .text import compose_text

SAMPLE_VERSION = 1


@dataclass(frozen=True)
class _Category:
    department: str
    name: str
    brands: tuple[str, ...]
    products: tuple[str, ...]
    features: tuple[str, ...]


def _c(department: str, name: str, brands: str, products: str, features: str) -> _Category:
    def split(s: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in s.split(";") if p.strip())

    return _Category(department, name, split(brands), split(products), split(features))


_CATEGORIES: tuple[_Category, ...] = (
    _c("Electronics", "Headphones", "Sonora; Auralis; Bassline; Quietude",
       "wireless over-ear headphones; true wireless earbuds; noise cancelling headphones; sport earbuds; studio monitor headphones",
       "active noise cancelling; 30-hour battery; USB-C fast charging; sweat resistant; foldable design; low-latency gaming mode"),
    _c("Electronics", "Cameras", "Lumix Pro; Aperture; Fotokraft; Veyra",
       "mirrorless camera body; compact travel zoom camera; 4K action camera; instant film camera; 50mm prime lens",
       "24 megapixel sensor; image stabilisation; weather sealed; 4K 60fps video; fast autofocus; flip-out screen"),
    _c("Electronics", "Smart Home", "Nestwell; Homebit; Lumos; Brightline",
       "smart speaker; video doorbell; smart LED bulb pack; wifi smart plug; indoor security camera",
       "voice assistant built in; works with Alexa and Google Home; motion alerts; energy monitoring; night vision; easy app setup"),
    _c("Books", "Mystery", "Harbour Press; Quill & Ink; Blackthorn Books; Lantern House",
       "cozy mystery novel; detective thriller; locked-room whodunit; police procedural; amateur sleuth novel",
       "set in a Scottish fishing village; set in the Yorkshire moors; a retired detective returns; a bakery owner turns sleuth; first in a series; set in 1920s London"),
    _c("Books", "Science Fiction", "Nebula House; Starward Press; Orbit Line; Farlight Books",
       "space opera novel; cyberpunk thriller; first contact novel; time travel novel; post-apocalyptic novel",
       "a strong female starship captain; galactic empire politics; artificial intelligence awakens; generation ship; award-winning author; trilogy opener"),
    _c("Books", "Cookbooks", "Open Table Press; Saffron Books; Hearth & Home; Green Fork",
       "vegetarian cookbook; baking cookbook; quick weeknight dinners cookbook; Italian cookbook; slow cooker cookbook",
       "over 100 recipes; step-by-step photos; family friendly meals; plant-based; 30-minute recipes; sourdough techniques"),
    _c("Home & Kitchen", "Cookware", "Castiron Co; Chefline; Copperleaf; Panora",
       "cast iron skillet; nonstick frying pan; stainless steel saucepan set; Dutch oven; carbon steel wok",
       "pre-seasoned; oven safe to 260C; induction compatible; dishwasher safe; PFOA free coating; lifetime warranty"),
    _c("Home & Kitchen", "Coffee", "Brewmaster; Crema; Bean & Burr; Morningside",
       "espresso machine; burr coffee grinder; pour-over coffee kit; French press; cold brew maker",
       "15 bar pump; milk frother; 40 grind settings; borosilicate glass; programmable timer; barista quality"),
    _c("Home & Kitchen", "Bedding", "Dreamweave; Linen Loft; Cloudrest; Nordnest",
       "linen duvet cover; memory foam pillow; weighted blanket; percale sheet set; down alternative comforter",
       "breathable; hypoallergenic; machine washable; cooling fabric; king size; organic cotton"),
    _c("Outdoor", "Camping", "Trailhead; Summit Gear; Wildfern; Basecamp",
       "two-person backpacking tent; ultralight sleeping bag; camping stove; inflatable sleeping pad; trekking poles",
       "waterproof; three-season; weighs under 1 kg; packs small; rated to -5C; quick setup"),
    _c("Outdoor", "Cycling", "Velocity; Chainring; Pedalworks; Roadrunner",
       "road bike helmet; bike repair kit; rechargeable bike light set; padded cycling shorts; clipless pedals",
       "aerodynamic; USB rechargeable; MIPS protection; reflective details; lightweight; fits most bikes"),
    _c("Outdoor", "Hiking", "Ridgeline; Alpenway; Wildfern; Stonepath",
       "waterproof hiking boots; daypack backpack; merino wool socks; softshell jacket; hydration bladder",
       "Gore-Tex lining; vibram sole; 25 litre capacity; breathable; wind resistant; ankle support"),
    _c("Sports & Fitness", "Yoga", "Lotus Flow; Zenform; Balance Studio; Mantra",
       "non-slip yoga mat; cork yoga block; yoga strap; meditation cushion; yoga wheel",
       "6mm thick; eco-friendly materials; extra grip; carrying strap included; beginner friendly; sweat resistant"),
    _c("Sports & Fitness", "Strength Training", "Ironcore; Forgefit; Gripstrong; Powerhouse",
       "adjustable dumbbell set; kettlebell; resistance band set; pull-up bar; weight bench",
       "space saving; quick weight change; up to 24 kg; heavy duty steel; home gym essential; anti-slip handles"),
    _c("Sports & Fitness", "Running", "Stride; Fleetfoot; Pacer; Tempo Run",
       "cushioned running shoes; GPS running watch; running belt; compression socks; reflective running vest",
       "heart rate monitor; lightweight mesh; carbon plate; marathon ready; breathable; long battery life"),
    _c("Toys & Games", "Board Games", "Meeple Works; Dicehouse; Tabletop Co; Gamenight",
       "strategy board game; cooperative board game; party card game; deck-building game; family trivia game",
       "2-4 players; 60 minute play time; ages 10 and up; award winning; easy to learn; high replay value"),
    _c("Toys & Games", "Building Sets", "Brickwise; Buildcraft; Constructo; Blockhaus",
       "space shuttle building set; castle building set; city fire station set; robotics kit; marble run set",
       "over 500 pieces; compatible with major brands; STEM learning; motorised parts; ages 8 and up; display model"),
    _c("Toys & Games", "Puzzles", "Jigsaw Lane; Puzzlecraft; Piecemeal; Mindbend",
       "1000-piece jigsaw puzzle; wooden brain teaser; 3D puzzle model; puzzle mat; mystery jigsaw puzzle",
       "landscape artwork; premium thick pieces; glare-free finish; challenging; recycled cardboard; gift boxed"),
    _c("Beauty", "Skincare", "Dermaleaf; Glowlab; Purely; Aqua Vera",
       "hydrating face serum; gentle foaming cleanser; SPF 50 sunscreen; retinol night cream; clay face mask",
       "hyaluronic acid; fragrance free; for sensitive skin; vitamin C; dermatologist tested; vegan formula"),
    _c("Beauty", "Hair Care", "Silkroot; Curlcraft; Mane Studio; Argania",
       "argan oil shampoo; leave-in conditioner; ionic hair dryer; ceramic hair straightener; curl defining cream",
       "sulfate free; for curly hair; heat protection; frizz control; salon quality; colour safe"),
    _c("Pets", "Dog Supplies", "Pawsome; Barkley; Happy Tails; Furwell",
       "orthopedic dog bed; no-pull dog harness; durable chew toy; grain-free dog food; retractable dog leash",
       "for large breeds; machine washable cover; reflective stitching; vet recommended; tough rubber; 5 metre lead"),
    _c("Pets", "Cat Supplies", "Whiskerly; Purrfect; Meowtown; Catnap",
       "cat scratching post; self-cleaning litter box; interactive cat toy; cat tree tower; grain-free cat food",
       "sisal rope; odour control; feather wand; multi-level; indoor cats; high protein"),
    _c("Garden", "Gardening Tools", "Greenthumb; Rootwell; Spadeworks; Bloomfield",
       "pruning shears; garden kneeler; stainless steel trowel set; expandable garden hose; leaf rake",
       "ergonomic handles; rust resistant; sharp bypass blades; lightweight; 30 metre length; foldable"),
    _c("Garden", "Plants & Seeds", "Seedsmith; Heirloom Farm; Sprout & Co; Wildmeadow",
       "heirloom tomato seeds; herb garden starter kit; wildflower seed mix; indoor succulent collection; bulb collection",
       "organic; non-GMO; easy to grow; attracts bees and butterflies; grows indoors; includes planting guide"),
    _c("Music", "Instruments", "Harmonia; Fretline; Keystone; Cadenza",
       "acoustic guitar; digital piano keyboard; ukulele starter kit; electric guitar amplifier; violin outfit",
       "solid spruce top; 88 weighted keys; includes gig bag; beginner friendly; built-in tuner; full size"),
    _c("Music", "Audio Gear", "Vinylux; Groovehall; Analogue Lab; Wavecraft",
       "belt-drive turntable; bookshelf speakers; USB audio interface; studio condenser microphone; stereo amplifier",
       "Bluetooth output; built-in preamp; 24-bit recording; warm analogue sound; wooden cabinet; low noise"),
    _c("Office", "Desk Setup", "Ergodesk; Workwell; Deskcraft; Posture Lab",
       "standing desk converter; ergonomic office chair; monitor arm; mechanical keyboard; wireless vertical mouse",
       "height adjustable; lumbar support; quiet switches; cable management; gas spring; fits 32 inch monitors"),
    _c("Office", "Stationery", "Inkwell; Paperfold; Scribe & Co; Notable",
       "dotted bullet journal; fountain pen; gel pen set; weekly planner; sketchbook",
       "A5 size; 120gsm paper; refillable; smooth writing; lay-flat binding; acid free"),
    _c("Kids & Baby", "Baby Gear", "Cradlecare; Littlesteps; Bumbleby; Nurtura",
       "lightweight stroller; convertible car seat; baby carrier; portable crib; high chair",
       "one-hand fold; from birth to 4 years; ergonomic support; easy to clean; travel friendly; safety certified"),
    _c("Kids & Baby", "Kids Books", "Little Owl Press; Storytime; Rainbow Reads; Picturebook Co",
       "picture book; bedtime story collection; early reader chapter book; lift-the-flap book; activity book",
       "ages 3-5; rhyming text; beautiful illustrations; learning to read; dinosaurs; animals and nature"),
)  # fmt: skip

# Distinct plain titles run out in a category of a few thousand items (books have 500); after
# this many collisions a title takes a series number instead.
_PLAIN_TITLE_TRIES = 30

_ADJECTIVES = (
    "Classic",
    "Pro",
    "Essential",
    "Premium",
    "Compact",
    "Everyday",
    "Signature",
    "Lite",
    "Max",
    "Original",
)
_VARIANTS = (
    "",
    "",
    "",
    "2-pack",
    "(2nd gen)",
    "- black",
    "- navy",
    "- sage green",
    "- large",
    "- travel edition",
)


def _title(rng: random.Random, category: _Category, brand: str, product: str) -> str:
    if category.department == "Books" or category.name == "Kids Books":
        words = (
            "Harbour",
            "Lantern",
            "Salt",
            "Midnight",
            "Ember",
            "Winter",
            "Silent",
            "Copper",
            "Hollow",
            "Northern",
        )
        nouns = (
            "Secret",
            "Tide",
            "Garden",
            "Stars",
            "Orchard",
            "Signal",
            "Crossing",
            "Lighthouse",
            "Voyage",
            "Kitchen",
        )
        return f"The {rng.choice(words)} {rng.choice(nouns)}: a {product}"
    variant = rng.choice(_VARIANTS)
    return f"{brand} {rng.choice(_ADJECTIVES)} {product.title()} {variant}".strip()


@lru_cache(maxsize=4)
def _build(
    num_items: int, num_users: int, seed: int
) -> tuple[tuple[Item, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
    rng = random.Random(seed)  # one stream, drawn from in this order: catalogue, then shoppers
    items, by_category, by_brand = _catalog(rng, num_items)
    return tuple(items), _shoppers(rng, items, by_category, by_brand, num_users)


def _catalog(
    rng: random.Random, num_items: int
) -> tuple[list[Item], dict[str, list[int]], dict[tuple[str, str], list[int]]]:
    """The products, and their positions by category and by (category, brand)."""
    items: list[Item] = []
    by_category: dict[str, list[int]] = {}
    by_brand: dict[tuple[str, str], list[int]] = {}
    per_category = max(1, num_items // len(_CATEGORIES))
    titles: set[str] = set()
    for category in _CATEGORIES:
        for _ in range(per_category):
            brand = rng.choice(category.brands)
            product = rng.choice(category.products)
            title = _title(rng, category, brand, product)
            tries = 0
            while title in titles:
                tries += 1
                title = _title(rng, category, brand, product)
                if tries >= _PLAIN_TITLE_TRIES:  # a large catalogue: series numbers, as real ones have
                    title = f"{title} {rng.choice('ABCDEFGHKMNPRSTX')}{rng.randint(100, 999)}"
            titles.add(title)
            features = rng.sample(category.features, 2)
            description = f"{product.capitalize()}, {features[0]}, {features[1]}"
            item_id = f"P{len(items) + 1:05d}"
            attributes = {
                "title": title,
                "department": category.department,
                "category": f"{category.department} > {category.name}",
                "brand": brand,
                "price": round(rng.uniform(5, 300), 2),
            }
            text = compose_text({**attributes, "description": description})
            by_category.setdefault(category.name, []).append(len(items))
            by_brand.setdefault((category.name, brand), []).append(len(items))
            items.append(Item(item_id, text, attributes))
    return items, by_category, by_brand


def _shoppers(
    rng: random.Random,
    items: list[Item],
    by_category: dict[str, list[int]],
    by_brand: dict[tuple[str, str], list[int]],
    num_users: int,
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Shoppers with a favourite category (and maybe a sibling and a brand), each history drawn
    by item popularity within what they like."""
    # Popularity: a Zipf-like weight for each item, in a random order.
    ranks = list(range(len(items)))
    rng.shuffle(ranks)
    popularity = [1.0 / (r + 1) ** 0.7 for r in ranks]
    departments: dict[str, list[str]] = {}
    for category in _CATEGORIES:
        departments.setdefault(category.department, []).append(category.name)
    category_weights = [rng.uniform(0.5, 2.0) for _ in _CATEGORIES]

    weight = np.asarray(popularity)
    in_category = {name: np.asarray(pool) for name, pool in by_category.items()}
    in_brand = {key: np.asarray(pool) for key, pool in by_brand.items()}

    def pick(pool: np.ndarray, taken: set[int]) -> int | None:
        # rng.choices(candidates, weights) over the pool less what is taken, drawn with numpy so
        # that 300,000 items stay fast: the same left-to-right running sum and bisection, so the
        # same draw from the same random number as random.choices would make.
        candidates = pool[~np.isin(pool, list(taken))] if taken else pool
        if len(candidates) == 0:
            return None
        cumulative = np.cumsum(weight[candidates])
        at = np.searchsorted(cumulative, rng.random() * float(cumulative[-1]), side="right")
        return int(candidates[min(int(at), len(candidates) - 1)])

    users: list[tuple[str, tuple[str, ...]]] = []
    everything = np.arange(len(items))
    for u in range(num_users):
        primary = rng.choices(_CATEGORIES, weights=category_weights)[0]
        siblings = [c for c in departments[primary.department] if c != primary.name]
        secondary = rng.choice(siblings) if siblings and rng.random() < 0.6 else None
        favourite_brand = rng.choice(primary.brands) if rng.random() < 0.7 else None
        length = min(40, 4 + int(rng.expovariate(1 / 10)))
        taken: set[int] = set()
        history: list[str] = []
        for _ in range(length):
            roll = rng.random()
            if roll < 0.65:
                pool = in_category[primary.name]
                if favourite_brand and rng.random() < 0.5:
                    pool = in_brand.get((primary.name, favourite_brand), pool)
            elif roll < 0.85 and secondary:
                pool = in_category[secondary]
            else:
                pool = everything
            choice = pick(pool, taken)
            if choice is None:
                choice = pick(everything, taken)
            if choice is None:
                break
            taken.add(choice)
            history.append(items[choice].item_id)
        users.append((f"U{u + 1:04d}", tuple(history)))
    return tuple(users)


def sample_dataset(num_items: int = 3000, num_users: int = 1000, seed: int = 7) -> Dataset:
    """The built-in catalogue: ``num_items`` products in 30 categories and ``num_users`` shoppers."""
    items, users = _build(num_items, num_users, seed)
    source = f"builtin:sample?version={SAMPLE_VERSION}&items={num_items}&users={num_users}&seed={seed}"
    digest = hashlib.sha256(source.encode()).hexdigest()
    return Dataset(
        name="sample",
        source=source,
        catalog=Catalog(items),
        sequences=dict(users),
        files={"builtin": digest},
    )
