package com.example.bookshop.report;

public final class CsvWriter {
  private CsvWriter() {}
  public static String csv(Report report) { StringBuilder out = new StringBuilder("label,amount\n"); for (ReportLine line : report.lines()) { out.append(line.label().replace(",", ";")).append(',').append(line.amount()).append('\n'); } return out.toString(); }
}
