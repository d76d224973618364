/*
 * AvroOfConnect: what Debezium's events become under Kafka Connect's Avro
 * mapping. It reads the lines DebeziumOracle writes with --with-keys --schemas
 * (Kafka Connect's JSON with schemas) and writes, per line, the key's and the
 * value's Avro schemas and their datums in Avro's binary encoding (base64), as an
 * Avro converter would produce them from the same Connect records:
 *
 *   {"destination": .., "key_schema": "<avro schema>", "key": "<base64>" | null,
 *    "value_schema": "<avro schema>", "value": "<base64>" | null}
 *
 * The mapping is Apicurio Registry's AvroData (a port of Confluent's, which is not
 * on Maven Central) with its defaults. tests/integration/test_debezium_oracle.py
 * compares pg_sink's Avro debezium envelope with it.
 *
 *   scripts/debezium.sh avro IN.jsonl OUT.jsonl
 */
package pgsink.tools;

import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Base64;
import java.util.List;
import java.util.Map;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.connect.data.Field;
import org.apache.kafka.connect.data.SchemaAndValue;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.json.JsonConverter;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

import io.apicurio.registry.utils.converter.avro.AvroData;

public final class AvroOfConnect {

    private static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: AvroOfConnect IN.jsonl OUT.jsonl");
            System.exit(2);
        }
        JsonConverter converter = new JsonConverter();
        converter.configure(Map.of("schemas.enable", "true", "converter.type", "value"));
        AvroData avro = new AvroData(100);
        int n = 0;
        try (BufferedReader in = Files.newBufferedReader(Paths.get(args[0]), StandardCharsets.UTF_8);
             BufferedWriter out = Files.newBufferedWriter(Paths.get(args[1]), StandardCharsets.UTF_8)) {
            String line;
            while ((line = in.readLine()) != null) {
                if (line.isBlank()) {
                    continue;
                }
                JsonNode record = JSON.readTree(line);
                String topic = record.path("destination").asText("");
                ObjectNode o = JSON.createObjectNode();
                o.put("destination", topic);
                for (String part : new String[] {"key", "value"}) {
                    JsonNode node = record.get(part);
                    if (node == null || node.isNull()) {
                        o.putNull(part + "_schema");
                        o.putNull(part);
                        continue;
                    }
                    SchemaAndValue connect = converter.toConnectData(topic, JSON.writeValueAsBytes(node));
                    restoreFloats(connect.schema(), connect.value(), node.get("payload"));
                    Schema schema = avro.fromConnectSchema(connect.schema());
                    Object datum = avro.fromConnectData(connect.schema(), connect.value());
                    o.put(part + "_schema", schema.toString());
                    o.put(part, Base64.getEncoder().encodeToString(binary(schema, datum)));
                }
                out.write(JSON.writeValueAsString(o));
                out.write('\n');
                n++;
            }
        }
        System.err.println("[avro-of-connect] " + n + " records");
    }

    /**
     * JsonConverter writes a NaN or infinite float as the string "NaN", "Infinity"
     * or "-Infinity", and reads such a string back as 0: put the float the
     * connector had back into the Connect value.
     */
    private static void restoreFloats(org.apache.kafka.connect.data.Schema schema, Object value, JsonNode json) {
        if (value == null || json == null) {
            return;
        }
        switch (schema.type()) {
            case STRUCT:
                Struct struct = (Struct) value;
                for (Field f : schema.fields()) {
                    JsonNode j = json.get(f.name());
                    Object v = struct.get(f);
                    if (isFloat(f.schema()) && j != null && j.isTextual()) {
                        struct.put(f, special(f.schema(), j.asText()));
                    } else {
                        restoreFloats(f.schema(), v, j);
                    }
                }
                break;
            case ARRAY:
                @SuppressWarnings("unchecked")
                List<Object> list = (List<Object>) value;
                for (int i = 0; i < list.size(); i++) {
                    JsonNode j = json.get(i);
                    if (isFloat(schema.valueSchema()) && j != null && j.isTextual()) {
                        list.set(i, special(schema.valueSchema(), j.asText()));
                    } else {
                        restoreFloats(schema.valueSchema(), list.get(i), j);
                    }
                }
                break;
            default:
                break;
        }
    }

    private static boolean isFloat(org.apache.kafka.connect.data.Schema s) {
        return s.type() == org.apache.kafka.connect.data.Schema.Type.FLOAT32 || s.type() == org.apache.kafka.connect.data.Schema.Type.FLOAT64;
    }

    private static Object special(org.apache.kafka.connect.data.Schema s, String text) {
        double d = Double.parseDouble(text);
        return s.type() == org.apache.kafka.connect.data.Schema.Type.FLOAT32 ? (Object) (float) d : (Object) d;
    }

    private static byte[] binary(Schema schema, Object datum) throws Exception {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(bytes, null);
        new GenericDatumWriter<Object>(schema).write(datum, encoder);
        encoder.flush();
        return bytes.toByteArray();
    }
}
