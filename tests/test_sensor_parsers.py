"""The three wire formats, decoded from bytes built by hand from the datasheets."""

from __future__ import annotations

import datetime as dt

import pytest

from hal.sensors.nmea import NmeaParser
from hal.sensors.pms5003 import Pms5003Parser, PmsReading, encode_frame
from hal.sensors.radar import RadarParser, RadarReading
from tests.sensor_frames import GGA_CLASSIC, RMC_CLASSIC, gga, nmea, pms_frame, radar_line, rmc

# ---------------------------------------------------------------- PMS5003


def test_pms_frame_decodes_atmospheric_values_and_counts() -> None:
    frame = pms_frame(pm1_0=12, pm2_5=300, pm10=1025, particles=(65535, 4660, 3, 2, 1, 0), cf1=(99, 98, 97))
    parsed = Pms5003Parser().feed(frame)
    assert parsed.errors == {}
    # Atmospheric values, not the CF=1 ones; 300 and 1025 need both bytes of their words.
    assert parsed.readings == [PmsReading(12, 300, 1025, 65535, 4660, 3, 2, 1, 0)]
    assert parsed.readings[0].as_dict() == {
        "pm1_0": 12,
        "pm2_5": 300,
        "pm10": 1025,
        "particles_0_3": 65535,
        "particles_0_5": 4660,
        "particles_1_0": 3,
        "particles_2_5": 2,
        "particles_5_0": 1,
        "particles_10": 0,
    }


def test_pms_encoder_matches_the_datasheet_layout() -> None:
    reading = PmsReading(0, 8, 400, 900, 260, 55, 7, 2, 1)
    assert encode_frame(reading, cf1=(6, 9, 12)) == pms_frame()


def test_pms_frames_cut_anywhere_decode_the_same() -> None:
    stream = pms_frame(pm2_5=1) + pms_frame(pm2_5=2) + pms_frame(pm2_5=3)
    for cut in range(len(stream) + 1):
        parser = Pms5003Parser()
        got = parser.feed(stream[:cut]).readings + parser.feed(stream[cut:]).readings
        assert [r.pm2_5 for r in got] == [1, 2, 3], cut


def test_pms_bad_checksum_is_counted_and_the_next_frame_found() -> None:
    bad = pms_frame(pm2_5=50, checksum=0x1234)
    parsed = Pms5003Parser().feed(pms_frame(pm2_5=1) + bad + pms_frame(pm2_5=2))
    assert [r.pm2_5 for r in parsed.readings] == [1, 2]
    assert parsed.errors == {"checksum": 1}


def test_pms_truncated_frame_then_a_whole_one() -> None:
    parsed = Pms5003Parser().feed(pms_frame(pm2_5=1) + pms_frame(pm2_5=7)[:17] + pms_frame(pm2_5=2))
    assert [r.pm2_5 for r in parsed.readings] == [1, 2]
    assert parsed.errors == {"truncated": 1}


def test_pms_wrong_length_field_is_malformed() -> None:
    parsed = Pms5003Parser().feed(pms_frame(pm2_5=1) + pms_frame(length=20) + pms_frame(pm2_5=2))
    assert [r.pm2_5 for r in parsed.readings] == [1, 2]
    assert parsed.errors == {"malformed": 1}


def test_pms_noise_is_counted_once_per_run_and_not_at_stream_start() -> None:
    parser = Pms5003Parser()
    # The tail of a frame before the first one: a port opened mid-frame, not an error.
    first = parser.feed(pms_frame()[-20:] + pms_frame(pm2_5=1))
    assert first.errors == {} and len(first.readings) == 1
    parsed = parser.feed(b"\x00\xffgarbage" + pms_frame(pm2_5=2) + b"zz")
    parsed2 = parser.feed(b"more garbage" + pms_frame(pm2_5=3))
    assert [r.pm2_5 for r in parsed.readings + parsed2.readings] == [2, 3]
    # Two runs: the garbage before frame 2, and "zz" continued by "more garbage" in the next chunk.
    assert parsed.errors == {"noise": 2} and parsed2.errors == {}


def test_pms_frame_with_impossible_values_is_malformed() -> None:
    # The checksum holds, but PM2.5 above PM10, or more particles beyond 1 µm than beyond 0.5 µm, cannot be.
    bad_mass = pms_frame(pm1_0=5, pm2_5=50, pm10=40)
    bad_counts = pms_frame(particles=(900, 260, 300, 7, 2, 1))
    parsed = Pms5003Parser().feed(pms_frame(pm2_5=1) + bad_mass + bad_counts + pms_frame(pm2_5=2))
    assert [r.pm2_5 for r in parsed.readings] == [1, 2]
    assert parsed.errors == {"malformed": 2}


def test_pms_garbage_only_stream_counts_noise() -> None:
    parsed = Pms5003Parser().feed(bytes(range(60)) * 3)
    assert parsed.readings == [] and parsed.errors == {"noise": 1}


def test_pms_flush_counts_a_frame_cut_by_the_end() -> None:
    parser = Pms5003Parser()
    assert parser.feed(pms_frame() + pms_frame()[:10]).errors == {}
    assert parser.flush().errors == {"truncated": 1}
    assert parser.flush().errors == {}


# ---------------------------------------------------------------- NMEA


def test_nmea_classic_gga_and_rmc() -> None:
    parsed = NmeaParser().feed(GGA_CLASSIC + RMC_CLASSIC)
    assert parsed.errors == {}
    gga_reading, rmc_reading = parsed.readings
    assert gga_reading.sentence == "GPGGA" and gga_reading.kind == "GGA"
    assert gga_reading.lat == pytest.approx(48 + 7.038 / 60) and gga_reading.lon == pytest.approx(11 + 31 / 60)
    assert gga_reading.fix_quality == 1 and gga_reading.satellites == 8 and gga_reading.has_fix
    assert gga_reading.utc == dt.time(12, 35, 19, tzinfo=dt.UTC)
    assert rmc_reading.utc == dt.datetime(1994, 3, 23, 12, 35, 19, tzinfo=dt.UTC)
    assert rmc_reading.speed_knots == pytest.approx(22.4) and rmc_reading.satellites is None
    assert rmc_reading.fix_quality == 1


def test_nmea_reading_as_json_fields() -> None:
    gga_reading, rmc_reading = NmeaParser().feed(GGA_CLASSIC + RMC_CLASSIC).readings
    assert gga_reading.as_dict() == {
        "sentence": "GPGGA",
        "utc": "12:35:19+00:00",
        "lat": pytest.approx(48.1173),
        "lon": pytest.approx(11.516666667),
        "fix_quality": 1,
        "satellites": 8,
    }
    assert rmc_reading.as_dict()["utc"] == "1994-03-23T12:35:19+00:00"
    assert rmc_reading.as_dict()["speed_knots"] == pytest.approx(22.4)
    assert "speed_knots" not in gga_reading.as_dict()


def test_nmea_southern_and_western_hemispheres_are_negative() -> None:
    (reading,) = NmeaParser().feed(gga(lat="3351.9170", ns="S", lon="15112.8300", ew="W")).readings
    assert reading.lat == pytest.approx(-(33 + 51.917 / 60))
    assert reading.lon == pytest.approx(-(151 + 12.83 / 60))


def test_nmea_no_fix() -> None:
    parsed = NmeaParser().feed(
        nmea("GNGGA,092750.00,,,,,0,00,99.99,,,,,,") + rmc(status="V", lat="", ns="", lon="", ew="", knots="", mode="N")
    )
    assert parsed.errors == {}
    no_gga, no_rmc = parsed.readings
    assert (no_gga.lat, no_gga.lon, no_gga.fix_quality, no_gga.has_fix) == (None, None, 0, False)
    assert (no_rmc.lat, no_rmc.fix_quality, no_rmc.has_fix, no_rmc.speed_knots) == (None, 0, False, None)
    assert no_rmc.utc == dt.datetime(2024, 5, 1, 9, 27, 50, tzinfo=dt.UTC)


def test_nmea_rmc_mode_maps_to_fix_quality() -> None:
    (differential,) = NmeaParser().feed(rmc(mode="D")).readings
    assert differential.fix_quality == 2


def test_nmea_checksum_errors() -> None:
    body = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    parsed = NmeaParser().feed(
        GGA_CLASSIC
        + nmea(body, checksum="48")  # wrong
        + f"${body}\r\n".encode()  # missing
        + nmea(body, checksum="4")  # one digit
        + GGA_CLASSIC.replace(b"4807.038", b"4807.039")  # a corrupted body
        + nmea(body)
    )
    assert len(parsed.readings) == 2
    assert parsed.errors == {"checksum": 4}


def test_nmea_lowercase_hex_checksum_is_accepted() -> None:
    sentence = nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W", checksum="6a")
    assert len(NmeaParser().feed(sentence).readings) == 1


def test_nmea_truncated_sentence_then_a_whole_one() -> None:
    parsed = NmeaParser().feed(GGA_CLASSIC + GGA_CLASSIC[:30] + RMC_CLASSIC)
    assert [r.kind for r in parsed.readings] == ["GGA", "RMC"]
    assert parsed.errors == {"truncated": 1}


def test_nmea_non_utf8_and_noise() -> None:
    parser = NmeaParser()
    parsed = parser.feed(GGA_CLASSIC + b"$GPGGA,12\xff\xfe,4807.038*11\r\n" + b"\x00\x01 line noise \x80" + RMC_CLASSIC)
    assert [r.kind for r in parsed.readings] == ["GGA", "RMC"]
    assert parsed.errors == {"non_utf8": 1, "noise": 1}


def test_nmea_other_sentences_are_skipped_not_errors() -> None:
    parser = NmeaParser()
    parsed = parser.feed(nmea("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00") + nmea("PUBX,00,1"))
    assert parsed.readings == [] and parsed.errors == {}
    assert parser.skipped == 2


@pytest.mark.parametrize(
    "sentence",
    [
        gga(lat="52x2.3860"),
        gga(ns="X"),
        gga(lat="9322.3860"),  # 93 degrees
        gga(time_="256199"),
        gga(satellites="many"),
        rmc(status="Q"),
        rmc(date="321399"),
        rmc(knots="fast"),
        nmea("GNGGA,092750.00,5222.3860,N"),  # checksum right, fields missing
    ],
)
def test_nmea_bad_fields_with_a_good_checksum_are_malformed(sentence: bytes) -> None:
    parsed = NmeaParser().feed(GGA_CLASSIC + sentence + RMC_CLASSIC)
    assert len(parsed.readings) == 2
    assert parsed.errors == {"malformed": 1}


def test_nmea_a_lone_dollar_in_noise_is_noise_and_overlong_lines_too() -> None:
    parser = NmeaParser()
    parsed = parser.feed(GGA_CLASSIC + b"$$" + RMC_CLASSIC + b"$" + b"A" * 300 + b"\r\n" + GGA_CLASSIC)
    assert [r.kind for r in parsed.readings] == ["GGA", "RMC", "GGA"]
    assert parsed.errors == {"noise": 2}


def test_nmea_flush_counts_a_sentence_cut_by_the_end() -> None:
    parser = NmeaParser()
    parser.feed(GGA_CLASSIC + RMC_CLASSIC[:20])
    assert parser.flush().errors == {"truncated": 1}


def test_nmea_sentences_cut_anywhere_decode_the_same() -> None:
    stream = GGA_CLASSIC + b"junk\r\n" + RMC_CLASSIC + gga()
    whole = NmeaParser().feed(stream)
    for cut in range(len(stream) + 1):
        parser = NmeaParser()
        first, second = parser.feed(stream[:cut]), parser.feed(stream[cut:])
        assert first.readings + second.readings == whole.readings, cut
        assert first.errors + second.errors == whole.errors, cut


# ---------------------------------------------------------------- radar


def test_radar_report_formats() -> None:
    parser = RadarParser("mps")
    parsed = parser.feed(
        radar_line(12.5)
        + radar_line(-3.25)
        + radar_line(40.0, unit="mph")
        + radar_line("-18", unit="kmph")
        + b"137.429,3.6\r\n"  # time report on: the speed comes last
        + b'"mps",137.429,55.1,-7.5\n'  # and magnitude
        + b'{"speed":"9.5","unit":"m-per-sec","direction":"outbound"}\r\n'
        + b'{"speed":4.25,"direction":"inbound"}\r\n'
    )
    assert parsed.errors == {}
    assert [(r.speed, r.unit) for r in parsed.readings] == [
        (12.5, "mps"),
        (-3.25, "mps"),
        (40.0, "mph"),
        (-18.0, "kmh"),
        (3.6, "mps"),
        (-7.5, "mps"),
        (-9.5, "mps"),
        (4.25, "mps"),
    ]
    assert [r.direction for r in parsed.readings[:2]] == ["inbound", "outbound"]
    assert parsed.readings[0].as_dict() == {"speed": 12.5, "unit": "mps"}


def test_radar_unit_conversion_to_kmh() -> None:
    assert RadarReading(10.0, "mps").speed_kmh == pytest.approx(36.0)
    assert RadarReading(-30.0, "mph").speed_kmh == pytest.approx(48.28032)
    assert RadarReading(50.0, "kmh").speed_kmh == pytest.approx(50.0)
    assert RadarReading(1000.0, "cmps").speed_kmh == pytest.approx(36.0)
    assert RadarReading(10.0, "fps").speed_kmh == pytest.approx(10.9728)


def test_radar_default_unit_is_the_configured_one() -> None:
    (reading,) = RadarParser("mph").feed(b"31.0\n").readings
    assert reading.unit == "mph"


def test_radar_blank_reports_and_command_answers_are_not_errors() -> None:
    parser = RadarParser()
    parsed = parser.feed(b"\r\n \r\n" + b'{"Units":"mph"}\r\n' + radar_line(2.0))
    assert [r.speed for r in parsed.readings] == [2.0] and parsed.errors == {}
    assert parser.skipped == 1


def test_radar_bad_lines_are_counted() -> None:
    parsed = RadarParser().feed(
        radar_line(1.0)
        + b"12.3.4\r\n"
        + b'"furlongs",3\r\n'
        + b"nan\r\n"
        + b"1e9999\r\n"
        + b"99999\r\n"  # far beyond any road speed: noise that happened to parse
        + b'{"speed":"fast"}\r\n'
        + b"\xff\xfe1.0\r\n"
        + b"7" * 200
        + b"\r\n"
        + radar_line(2.0)
    )
    assert [r.speed for r in parsed.readings] == [1.0, 2.0]
    assert parsed.errors == {"malformed": 6, "non_utf8": 1, "noise": 1}


def test_radar_live_port_drops_the_first_line() -> None:
    # Opened mid-report, "17.40" may arrive as "7.40" or even "40": the first line cannot be trusted.
    parsed = RadarParser(mid_stream=True).feed(b"40\r\n" + radar_line(17.4))
    assert [r.speed for r in parsed.readings] == [17.4] and parsed.errors == {}


def test_radar_flush_counts_a_cut_line() -> None:
    parser = RadarParser()
    parser.feed(radar_line(1.0) + b"12.")
    assert parser.flush().errors == {"truncated": 1}


def test_radar_lines_cut_anywhere_decode_the_same() -> None:
    stream = radar_line(1.5) + b"bad\r\n" + b"9" * 150 + b"\n" + radar_line(-2.5, unit="mph")
    whole = RadarParser().feed(stream)
    for cut in range(len(stream) + 1):
        parser = RadarParser()
        first, second = parser.feed(stream[:cut]), parser.feed(stream[cut:])
        assert first.readings + second.readings == whole.readings, cut
        assert first.errors + second.errors == whole.errors, cut
