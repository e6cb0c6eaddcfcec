"""ISO 4217 minor units: how many decimals each currency's smallest unit has.

Stripe sends amounts in the currency's smallest unit, so the report divides by 10**exponent:
100 for USD, 1 for JPY or KRW, 1000 for BHD or KWD. A code missing here has no known exponent,
so an event carrying it cannot be reported correctly and is dead-lettered instead of guessed.
"""

from __future__ import annotations

_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR IRR JMD KES KGS KHR "
    "KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR "
    "MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK "
    "SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN "
    "UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL"
)

#: Upper-case ISO 4217 code → decimals of its minor unit.
MINOR_UNITS: dict[str, int] = {
    code: exponent
    for codes, exponent in ((_ZERO, 0), (_TWO, 2), (_THREE, 3), (_FOUR, 4))
    for code in codes.split()
}


def exponent(code: str) -> int | None:
    """Decimals of `code`'s minor unit (any case), or None for a code ISO 4217 does not list."""
    return MINOR_UNITS.get(code.upper())
