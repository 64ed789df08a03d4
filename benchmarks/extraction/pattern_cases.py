r"""Extraction cases whose schemas carry ``pattern``\s and ``format``\s (issue 10, part 4).

Written for this benchmark, after the 36 cases of :mod:`.cases`, to be like real extraction
work: flight numbers and airport codes, parcel tracking numbers and postal codes, invoice
numbers and VAT ids, e-mail addresses and E.164 phone numbers, IBANs and BICs, release
versions, commit hashes and ticket keys, stock tickers and trade times, IPv4 addresses and
error codes, medical record numbers. Dates are ``datetime.date`` (JSON-schema ``format:
date``), addresses ``IPv4Address`` (``format: ipv4``); the rest are regex patterns with the
escapes a user writes (``\d``, ``\s``, ``\.``, classes, anchors, alternations), and one list
is bounded (``maxItems``). The texts give most values verbatim, and sometimes in another form
(``9 July 2025``, ``4:15 pm``) that the schema's form must be produced from. Nothing here
was chosen to suit a strategy: the cases were written before any strategy ran on them.

Every field's description says the form in words, as a prompt would; the pattern itself
is in the schema only (what a constrained decoder or a validator sees).
"""

from __future__ import annotations

from datetime import date
from ipaddress import IPv4Address
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from benchmarks.extraction.cases import Case

HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"
ISO_CURRENCY = r"^[A-Z]{3}$"


class Flight(BaseModel):
    flight_number: str = Field(pattern=r"^[A-Z]{2}\d{1,4}$", description="airline code and number, no space")
    origin: str = Field(pattern=r"^[A-Z]{3}$", description="IATA airport code")
    destination: str = Field(pattern=r"^[A-Z]{3}$", description="IATA airport code")
    departure_date: date = Field(description="YYYY-MM-DD")
    departure_time: str = Field(pattern=HHMM, description="HH:MM, 24-hour clock")


class Shipment(BaseModel):
    tracking_number: str = Field(pattern=r"^1Z[0-9A-Z]{16}$", description="UPS tracking number")
    zip_code: str = Field(pattern=r"^\d{5}(-\d{4})?$", description="US ZIP or ZIP+4")
    ship_date: date = Field(description="YYYY-MM-DD")


class InvoiceRef(BaseModel):
    number: str = Field(pattern=r"^INV-\d{4}-\d{2,4}$", description="invoice number")
    issued: date = Field(description="YYYY-MM-DD")
    due: date = Field(description="YYYY-MM-DD")
    total: float
    currency: str = Field(pattern=ISO_CURRENCY, description="ISO 4217 code")
    vat_id: str | None = Field(None, pattern=r"^[A-Z]{2}[0-9A-Z]{8,12}$",
                               description="seller's VAT id, null if not given")


class ContactCard(BaseModel):
    name: str
    email: str = Field(pattern=r"^[\w.+-]+@[\w-]+(\.[\w-]+)+$", description="e-mail address")
    phone: str = Field(pattern=r"^\+[1-9]\d{7,14}$", description="E.164: + and digits only")
    postcode: str = Field(pattern=r"^[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}$", description="UK postcode")


class Transfer(BaseModel):
    iban: str = Field(pattern=r"^[A-Z]{2}\d{2}[A-Z0-9]{11,30}$", description="IBAN, no spaces")
    bic: str = Field(pattern=r"^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$", description="BIC / SWIFT code")
    amount: float
    currency: str = Field(pattern=ISO_CURRENCY, description="ISO 4217 code")
    value_date: date = Field(description="YYYY-MM-DD")


TicketKey = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]+-\d+$")]


class Release(BaseModel):
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$", description="MAJOR.MINOR.PATCH, no 'v'")
    released: date = Field(description="YYYY-MM-DD")
    commit: str = Field(pattern=r"^[0-9a-f]{7,40}$", description="git commit hash")
    fixes: list[TicketKey] = Field(max_length=5, description="issue keys such as ABC-12")


class Trade(BaseModel):
    ticker: str = Field(pattern=r"^[A-Z]{1,5}$", description="stock ticker symbol")
    side: Literal["buy", "sell"]
    shares: int
    price: float = Field(description="price per share")
    trade_date: date = Field(description="YYYY-MM-DD")
    trade_time: str = Field(pattern=HHMM, description="HH:MM, 24-hour clock")


class Alert(BaseModel):
    host: IPv4Address = Field(description="IPv4 address")
    port: int
    time: str = Field(pattern=r"^\d{2}:\d{2}:\d{2}$", description="HH:MM:SS")
    code: str = Field(pattern=r"^E\d{4}$", description="error code")
    severity: Literal["info", "warning", "critical"]


class Visit(BaseModel):
    patient: str
    mrn: str = Field(pattern=r"^MRN-\d{6}$", description="medical record number")
    visit_date: date = Field(description="YYYY-MM-DD")
    time: str = Field(pattern=HHMM, description="HH:MM, 24-hour clock")


def _p(id: str, model: type[BaseModel], text: str, expected: dict, *tags: str) -> Case:
    return Case(id, text, model, expected, ("pattern", *tags))


PATTERN_CASES: list[Case] = [
    _p("flight-1", Flight, "KLM flight KL1234 leaves AMS for JFK on 2025-03-14 at 08:30.",
       {"flight_number": "KL1234", "origin": "AMS", "destination": "JFK",
        "departure_date": "2025-03-14", "departure_time": "08:30"}, "date", "format"),
    _p("flight-2", Flight, "Your flight BA117 from LHR to SFO departs on 9 July 2025 at 13:05.",
       {"flight_number": "BA117", "origin": "LHR", "destination": "SFO",
        "departure_date": "2025-07-09", "departure_time": "13:05"}, "date", "format"),
    _p("shipment-1", Shipment, "Package 1Z999AA10123456784 ships to 02139-4307 on 2024-12-02.",
       {"tracking_number": "1Z999AA10123456784", "zip_code": "02139-4307", "ship_date": "2024-12-02"},
       "date", "format"),
    _p("shipment-2", Shipment, "Shipped Nov 28, 2024 to ZIP 94103. Tracking: 1Z4F7W860398471123.",
       {"tracking_number": "1Z4F7W860398471123", "zip_code": "94103", "ship_date": "2024-11-28"},
       "date", "format"),
    _p("invoice-3", InvoiceRef,
       "Invoice INV-2024-0117 issued 2024-10-01, due 2024-10-31: total 1480.50 EUR. VAT ID DE123456789.",
       {"number": "INV-2024-0117", "issued": "2024-10-01", "due": "2024-10-31", "total": 1480.5,
        "currency": "EUR", "vat_id": "DE123456789"}, "date", "format", "float", "optional"),
    _p("invoice-4", InvoiceRef,
       "INV-2025-03 from Hoffmann GmbH, dated 3 February 2025, payable by 5 March 2025: 320.00 CHF.",
       {"number": "INV-2025-03", "issued": "2025-02-03", "due": "2025-03-05", "total": 320.0,
        "currency": "CHF", "vat_id": None}, "date", "format", "float", "optional"),
    _p("contact-3", ContactCard,
       "Olivia Grant: olivia.grant@example.co.uk, +442079460123, office at SW1A 1AA.",
       {"name": "Olivia Grant", "email": "olivia.grant@example.co.uk", "phone": "+442079460123",
        "postcode": "SW1A 1AA"}, "flat"),
    _p("contact-4", ContactCard,
       "For the London office call Dariusz Kowalski on +48221234567 (d.kowalski@firma.pl), EC1V 9BP.",
       {"name": "Dariusz Kowalski", "email": "d.kowalski@firma.pl", "phone": "+48221234567",
        "postcode": "EC1V 9BP"}, "flat"),
    _p("transfer-1", Transfer,
       "Transfer 250.00 EUR to IBAN DE89370400440532013000 (BIC COBADEFFXXX) on 2024-08-15.",
       {"iban": "DE89370400440532013000", "bic": "COBADEFFXXX", "amount": 250.0, "currency": "EUR",
        "value_date": "2024-08-15"}, "date", "float"),
    _p("transfer-2", Transfer,
       "On 2 September 2024 we sent GBP 1200 to GB29NWBK60161331926819, BIC NWBKGB2L.",
       {"iban": "GB29NWBK60161331926819", "bic": "NWBKGB2L", "amount": 1200.0, "currency": "GBP",
        "value_date": "2024-09-02"}, "date", "float"),
    _p("release-1", Release, "Version 2.14.3 shipped on 2025-01-09 (commit 9fceb02), fixing PAY-4521.",
       {"version": "2.14.3", "released": "2025-01-09", "commit": "9fceb02", "fixes": ["PAY-4521"]},
       "date", "list"),
    _p("release-2", Release,
       "v0.9.12 went out on March 3, 2024 from build a1b2c3d4e5; it closes OPS-77 and OPS-81.",
       {"version": "0.9.12", "released": "2024-03-03", "commit": "a1b2c3d4e5", "fixes": ["OPS-77", "OPS-81"]},
       "date", "list"),
    _p("trade-1", Trade, "Bought 150 shares of NVDA at 131.25 on 2024-11-20, 10:42.",
       {"ticker": "NVDA", "side": "buy", "shares": 150, "price": 131.25, "trade_date": "2024-11-20",
        "trade_time": "10:42"}, "date", "enum", "int", "float"),
    _p("trade-2", Trade, "At 15:58 on 6 December 2024 the fund sold 40 AAPL for 243.10 each.",
       {"ticker": "AAPL", "side": "sell", "shares": 40, "price": 243.1, "trade_date": "2024-12-06",
        "trade_time": "15:58"}, "date", "enum", "int", "float"),
    _p("alert-1", Alert, "At 03:14:07 host 10.0.12.7 (port 5432) raised E1042, severity critical.",
       {"host": "10.0.12.7", "port": 5432, "time": "03:14:07", "code": "E1042", "severity": "critical"},
       "format", "enum", "int"),
    _p("alert-2", Alert, "Warning from 192.168.1.20:8080 at 22:05:30, code E0007.",
       {"host": "192.168.1.20", "port": 8080, "time": "22:05:30", "code": "E0007", "severity": "warning"},
       "format", "enum", "int"),
    _p("visit-1", Visit, "Anna Berg (MRN-004521) was seen on 12 March 2024 at 4:15 pm.",
       {"patient": "Anna Berg", "mrn": "MRN-004521", "visit_date": "2024-03-12", "time": "16:15"}, "date"),
    _p("visit-2", Visit, "Follow-up for MRN-118230, Tomas Silva: 2024-06-30, 09:00.",
       {"patient": "Tomas Silva", "mrn": "MRN-118230", "visit_date": "2024-06-30", "time": "09:00"}, "date"),
]
