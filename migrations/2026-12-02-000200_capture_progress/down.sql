DROP TABLE walhook.gaps;
DROP TABLE walhook.capture_progress;
