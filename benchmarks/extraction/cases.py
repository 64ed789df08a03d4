"""The extraction cases: a short text, a pydantic model, and the values a correct answer holds.

Written for this benchmark (36 cases over 17 models, then the 18 cases of
:mod:`.pattern_cases` over 9 more whose schemas carry regex patterns and formats). They vary
the shapes a small model finds hard: flat objects, nested objects, lists of strings and of
objects, enums (``Literal``), integers and floats, booleans, optional fields that the text
leaves out (expected ``null``), dates written as ``YYYY-MM-DD`` strings, and identifiers,
codes, times and addresses that must match a pattern.

*Valid* means the answer parses and validates against the model. *Correct* is judged apart
from validity, on normalized values (:func:`score`): strings compared case- and
space-insensitively, numbers with a tolerance, lists as multisets.

Every strategy sends the same messages (:func:`messages_for`): the system prompt of the
issue's measurement and one user message that names the fields and quotes the text.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

SYSTEM_PROMPT = "You are a helpful assistant. Reply with JSON only."


# -- the models ------------------------------------------------------------------------------
class Person(BaseModel):
    name: str = Field(description="full name")
    age: int
    city: str


class Contact(BaseModel):
    name: str
    email: str
    phone: str | None = Field(None, description="null if not given")


class Book(BaseModel):
    title: str
    author: str
    year: int = Field(description="publication year")


class Product(BaseModel):
    name: str
    price: float = Field(description="price as a number, no currency sign")
    in_stock: bool


class Ticket(BaseModel):
    title: str = Field(description="short summary of the problem")
    priority: Literal["low", "medium", "high"]
    status: Literal["open", "closed"]


class Review(BaseModel):
    product: str
    rating: int = Field(ge=1, le=5, description="stars from 1 to 5")
    sentiment: Literal["positive", "negative", "neutral"]


class Event(BaseModel):
    name: str
    date: str = Field(description="YYYY-MM-DD")
    city: str


class Meeting(BaseModel):
    topic: str
    date: str = Field(description="YYYY-MM-DD")
    attendees: list[str] = Field(description="first names")


class Recipe(BaseModel):
    dish: str
    servings: int
    ingredients: list[str]


class Customer(BaseModel):
    name: str
    email: str


class Order(BaseModel):
    order_id: str
    customer: Customer
    total: float


class LineItem(BaseModel):
    description: str
    quantity: int
    unit_price: float


class Invoice(BaseModel):
    number: str
    currency: Literal["USD", "EUR", "GBP"]
    items: list[LineItem]


class Weather(BaseModel):
    city: str
    temperature_c: float = Field(description="degrees Celsius")
    condition: Literal["sunny", "cloudy", "rainy", "snowy"]


class Address(BaseModel):
    city: str
    country: str


class Company(BaseModel):
    name: str
    founded: int = Field(description="year")
    headquarters: Address
    employees: int


class Movie(BaseModel):
    title: str
    director: str
    year: int
    genres: list[str]


class Job(BaseModel):
    title: str
    company: str
    salary: int | None = Field(None, description="yearly salary as a number, null if not given")
    remote: bool


class Appointment(BaseModel):
    patient: str
    doctor: str
    date: str = Field(description="YYYY-MM-DD")
    time: str = Field(description="HH:MM, 24-hour clock")


class Payment(BaseModel):
    merchant: str
    amount: float
    currency: Literal["USD", "EUR", "GBP"]
    refunded: bool


# -- the cases -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One extraction task.

    Attributes:
        id: short, unique.
        text: the source text.
        model: the pydantic model the answer must validate against.
        expected: the values of a correct answer (``None`` where the text gives none).
        tags: the shapes it exercises (``flat``, ``nested``, ``list``, ``enum``, ...).
    """

    id: str
    text: str
    model: type[BaseModel]
    expected: dict[str, Any]
    tags: tuple[str, ...] = field(default=())


def _c(id: str, model: type[BaseModel], text: str, expected: dict[str, Any], *tags: str) -> Case:
    return Case(id, text, model, expected, tags)


CASES: list[Case] = [
    _c("person-1", Person, "Maria Lopez, 34, lives in Valencia.",
       {"name": "Maria Lopez", "age": 34, "city": "Valencia"}, "flat", "int"),
    _c("person-2", Person, "Our new tenant is Kenji Watanabe. He moved to Osaka last spring and turned 52 in May.",
       {"name": "Kenji Watanabe", "age": 52, "city": "Osaka"}, "flat", "int"),
    _c("contact-1", Contact, "Reach Priya Nair at priya.nair@example.com or call +44 20 7946 0958.",
       {"name": "Priya Nair", "email": "priya.nair@example.com", "phone": "+44 20 7946 0958"}, "flat", "optional"),
    _c("contact-2", Contact, "Please write to Tom Becker (tom.becker@example.org); he has no phone.",
       {"name": "Tom Becker", "email": "tom.becker@example.org", "phone": None}, "flat", "optional"),
    _c("book-1", Book, "'The Left Hand of Darkness' by Ursula K. Le Guin came out in 1969.",
       {"title": "The Left Hand of Darkness", "author": "Ursula K. Le Guin", "year": 1969}, "flat", "int"),
    _c("book-2", Book, "In 2016 Yaa Gyasi published her debut novel, Homegoing.",
       {"title": "Homegoing", "author": "Yaa Gyasi", "year": 2016}, "flat", "int"),
    _c("product-1", Product, "The Aero kettle costs 39.90 and is in stock.",
       {"name": "Aero kettle", "price": 39.9, "in_stock": True}, "flat", "float", "bool"),
    _c("product-2", Product, "Sorry, the Trail Runner 2 shoes (price: 129.50) are sold out.",
       {"name": "Trail Runner 2", "price": 129.5, "in_stock": False}, "flat", "float", "bool"),
    _c("ticket-1", Ticket, "Ticket 'Login page broken': URGENT, every user gets error 500. Still open.",
       {"title": "Login page broken", "priority": "high", "status": "open"}, "enum"),
    _c("ticket-2", Ticket, "Ticket 'Typo in footer' (low priority) was fixed and closed yesterday.",
       {"title": "Typo in footer", "priority": "low", "status": "closed"}, "enum"),
    _c("review-1", Review, "I love my Zen headphones! 5 stars, great sound.",
       {"product": "Zen headphones", "rating": 5, "sentiment": "positive"}, "enum", "int"),
    _c("review-2", Review, "The Nimbus umbrella broke on day two. One star.",
       {"product": "Nimbus umbrella", "rating": 1, "sentiment": "negative"}, "enum", "int"),
    _c("event-1", Event, "PyCon Italia takes place in Florence on 2025-05-28.",
       {"name": "PyCon Italia", "date": "2025-05-28", "city": "Florence"}, "date"),
    _c("event-2", Event, "Join us for the Harbour Jazz Night in Lisbon on 14 June 2024.",
       {"name": "Harbour Jazz Night", "date": "2024-06-14", "city": "Lisbon"}, "date"),
    _c("meeting-1", Meeting, "Budget review on 2024-03-15 with Anna, Ben and Chloe.",
       {"topic": "Budget review", "date": "2024-03-15", "attendees": ["Anna", "Ben", "Chloe"]}, "list", "date"),
    _c("meeting-2", Meeting, "Website launch: Omar and Lea meet on 2024-11-02.",
       {"topic": "website launch", "date": "2024-11-02", "attendees": ["Omar", "Lea"]}, "list", "date"),
    _c("recipe-1", Recipe, "Pancakes for 4: flour, milk, eggs and butter.",
       {"dish": "Pancakes", "servings": 4, "ingredients": ["flour", "milk", "eggs", "butter"]}, "list", "int"),
    _c("recipe-2", Recipe, "This guacamole serves 2. You need avocado, lime and salt.",
       {"dish": "guacamole", "servings": 2, "ingredients": ["avocado", "lime", "salt"]}, "list", "int"),
    _c("order-1", Order, "Order A-1042 from Jane Doe (jane@example.com), total 58.20.",
       {"order_id": "A-1042", "customer": {"name": "Jane Doe", "email": "jane@example.com"}, "total": 58.2},
       "nested", "float"),
    _c("order-2", Order, "Ravi Shah, ravi.shah@example.net, placed order B-77 worth 1200.00.",
       {"order_id": "B-77", "customer": {"name": "Ravi Shah", "email": "ravi.shah@example.net"}, "total": 1200.0},
       "nested", "float"),
    _c("invoice-1", Invoice, "Invoice INV-9: 2 chairs at 45.00 USD each and 1 desk at 120.00 USD.",
       {"number": "INV-9", "currency": "USD", "items": [
           {"description": "chairs", "quantity": 2, "unit_price": 45.0},
           {"description": "desk", "quantity": 1, "unit_price": 120.0}]}, "nested", "list", "enum"),
    _c("invoice-2", Invoice, "Invoice 2024-17 (EUR): 3 notebooks at 4.50 each.",
       {"number": "2024-17", "currency": "EUR", "items": [
           {"description": "notebooks", "quantity": 3, "unit_price": 4.5}]}, "nested", "list", "enum"),
    _c("weather-1", Weather, "Oslo today: snow all day, minus 4 degrees Celsius.",
       {"city": "Oslo", "temperature_c": -4.0, "condition": "snowy"}, "enum", "float"),
    _c("weather-2", Weather, "Clear blue skies over Athens, 31.5 °C.",
       {"city": "Athens", "temperature_c": 31.5, "condition": "sunny"}, "enum", "float"),
    _c("company-1", Company, "Nordlys AS was founded in 1998, is based in Bergen, Norway, and employs 240 people.",
       {"name": "Nordlys AS", "founded": 1998, "headquarters": {"city": "Bergen", "country": "Norway"},
        "employees": 240}, "nested", "int"),
    _c("company-2", Company, "Headquartered in Toronto, Canada, Maple Robotics (est. 2015) has 85 staff.",
       {"name": "Maple Robotics", "founded": 2015, "headquarters": {"city": "Toronto", "country": "Canada"},
        "employees": 85}, "nested", "int"),
    _c("movie-1", Movie, "Spirited Away (2001), directed by Hayao Miyazaki. Genres: animation, fantasy.",
       {"title": "Spirited Away", "director": "Hayao Miyazaki", "year": 2001, "genres": ["animation", "fantasy"]},
       "list", "int"),
    _c("movie-2", Movie, "Greta Gerwig's 2019 drama Little Women.",
       {"title": "Little Women", "director": "Greta Gerwig", "year": 2019, "genres": ["drama"]}, "list", "int"),
    _c("job-1", Job, "Acme hires a Data Engineer, fully remote, paying 85000 a year.",
       {"title": "Data Engineer", "company": "Acme", "salary": 85000, "remote": True}, "optional", "bool"),
    _c("job-2", Job, "Globex is looking for an on-site Office Manager in Leeds. Salary not disclosed.",
       {"title": "Office Manager", "company": "Globex", "salary": None, "remote": False}, "optional", "bool"),
    _c("appointment-1", Appointment, "Lena Fischer sees Dr. Okafor on 2024-09-03 at 14:30.",
       {"patient": "Lena Fischer", "doctor": "Dr. Okafor", "date": "2024-09-03", "time": "14:30"}, "date"),
    _c("appointment-2", Appointment, "Dr. Ruiz will see Paul Martin at 09:15 on 2025-01-20.",
       {"patient": "Paul Martin", "doctor": "Dr. Ruiz", "date": "2025-01-20", "time": "09:15"}, "date"),
    _c("payment-1", Payment, "You paid 12.40 GBP at Corner Cafe. Not refunded.",
       {"merchant": "Corner Cafe", "amount": 12.4, "currency": "GBP", "refunded": False}, "enum", "float", "bool"),
    _c("payment-2", Payment, "Refund issued: 89.99 USD from TechMart has been returned to your card.",
       {"merchant": "TechMart", "amount": 89.99, "currency": "USD", "refunded": True}, "enum", "float", "bool"),
    _c("person-3", Person, "Age 27, from Nairobi: that's Amina Odhiambo.",
       {"name": "Amina Odhiambo", "age": 27, "city": "Nairobi"}, "flat", "int"),
    _c("payment-3", Payment, "Card payment to Bakery Blum, 7.00 EUR.",
       {"merchant": "Bakery Blum", "amount": 7.0, "currency": "EUR", "refunded": False}, "enum", "float", "bool"),
]


# -- the prompt ------------------------------------------------------------------------------
def _type_text(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in node:
        return _type_text(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        kinds = [_type_text(n, defs) for n in node["anyOf"] if n.get("type") != "null"]
        return " or ".join(kinds) + " or null"
    if "enum" in node:
        return "one of " + ", ".join(json.dumps(v) for v in node["enum"])
    kind = node.get("type", "value")
    if kind == "array":
        return f"array of {_type_text(node.get('items', {}), defs)}"
    if kind == "object":
        inner = ", ".join(f"{k}: {_type_text(v, defs)}" for k, v in node.get("properties", {}).items())
        return "object {" + inner + "}"
    return str(kind)


def field_lines(model: type[BaseModel]) -> list[str]:
    """One line per top-level field: ``- name (type): description``."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    lines = []
    for name, node in schema.get("properties", {}).items():
        desc = node.get("description")
        lines.append(f"- {name} ({_type_text(node, defs)})" + (f": {desc}" if desc else ""))
    return lines


def messages_for(case: Case) -> list[dict[str, str]]:
    """The messages every strategy sends for ``case`` (system prompt + one user message)."""
    user = ("Extract the data from the text into a JSON object with these fields:\n"
            + "\n".join(field_lines(case.model)) + f'\n\nText: "{case.text}"')
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# -- scoring ---------------------------------------------------------------------------------
def normalize(value: Any) -> Any:
    """A comparable form: strings case-folded, spaces collapsed, end punctuation and a leading
    article cut; numbers as floats; lists sorted (multisets); dicts normalized key by key."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")  # dates and addresses as their JSON strings
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        s = re.sub(r"\s+", " ", value).strip().strip(".,;").casefold()
        return re.sub(r"^(the|a|an) ", "", s)  # "The Aero kettle" names the Aero kettle
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return sorted((normalize(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


def same(expected: Any, got: Any) -> bool:
    """Whether two normalized values match (floats within 1e-6, relative or absolute)."""
    if isinstance(expected, float) and isinstance(got, float):
        return math.isclose(expected, got, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(expected, dict) and isinstance(got, dict):
        return all(same(v, got.get(k)) for k, v in expected.items())
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(same(a, b) for a, b in zip(expected, got, strict=True))
    return type(expected) is type(got) and expected == got


def score(case: Case, parsed: Any) -> tuple[bool, float]:
    """``(correct, field_accuracy)`` of a parsed answer against the case's expected values.

    Args:
        case: the case.
        parsed: the validated instance (or a dict); ``None`` scores ``(False, 0.0)``.

    Returns:
        ``correct``: every expected top-level field matches; ``field_accuracy``: the share
        of top-level fields that match.
    """
    if parsed is None:
        return False, 0.0
    got = normalize(parsed)
    if not isinstance(got, dict):
        return False, 0.0
    hits = [same(normalize(v), got.get(k)) for k, v in case.expected.items()]
    return all(hits), sum(hits) / len(hits)


# The pattern and format cases live in their own module; they are part of the suite, after
# the 36 above (so a run's first cases, and --quick, stay what they were).
from benchmarks.extraction.pattern_cases import PATTERN_CASES  # noqa: E402

CASES.extend(PATTERN_CASES)
