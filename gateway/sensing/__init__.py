"""Serial sensors turned into events: the sensor service, air quality, speed passes, radar and
plate fusion, location and the clock check."""
