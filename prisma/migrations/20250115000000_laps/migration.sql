-- CreateTable
CREATE TABLE "laps" (
    "id" BIGSERIAL NOT NULL,
    "event_id" TEXT NOT NULL,
    "seq" BIGINT NOT NULL,
    "driver" TEXT NOT NULL,
    "lap_number" INTEGER NOT NULL,
    "lap_time_ms" INTEGER NOT NULL,
    "recorded_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "laps_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "laps_seq_key" ON "laps"("seq");

-- CreateIndex
CREATE INDEX "laps_event_id_seq_idx" ON "laps"("event_id", "seq");

-- AddForeignKey
ALTER TABLE "laps" ADD CONSTRAINT "laps_event_id_fkey" FOREIGN KEY ("event_id") REFERENCES "events"("id") ON DELETE RESTRICT ON UPDATE CASCADE;
