DROP TABLE IF EXISTS walhook.instances;
